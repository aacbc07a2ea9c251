"""What a run creates on the cluster, its Jobs and (under DRA) ResourceClaims: creating each
one, and deleting them all within a budget, saying what is left and how to remove it.

Every name is remembered before the call that creates it, so a Ctrl-C during the call still
cleans up. Deletion never hangs and never masks the error being reported: it retries for
``DELETE_BUDGET_S`` at most and then prints the exact ``kubectl delete`` command.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.backends.kubernetes.client import (
    Client,
    connection_why,
    namespace_missing,
    one_line,
)
from pytest_kts.backends.kubernetes.errors import ApiNotFound
from pytest_kts.backends.kubernetes.gpu_request import DRA_GROUP, DRA_PLURAL, DRA_VERSION
from pytest_kts.backends.kubernetes.settings import ClusterSettings
from pytest_kts.errors import ClusterError

log = logging.getLogger("pytest_kts.kubernetes")


class CreatedObjects:
    """Every Job and ResourceClaim one backend asked for, in order, and which are gone."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.jobs: list[str] = []
        self.claims: list[str] = []
        self.deleted: set[str] = set()
        self.left_behind: list[str] = []  # what cleanup could not delete

    def create_job(self, client: Client, manifest: dict[str, Any], deadline: float) -> None:
        name = manifest["metadata"]["name"]
        self.jobs.append(name)  # before the call: a Ctrl-C during it must still clean up
        client.call(
            client.batch.create_namespaced_job,
            self.settings.namespace,
            manifest,
            doing=f"create Job {name}",
            deadline=deadline,
        )

    def create_claim(self, client: Client, manifest: dict[str, Any], deadline: float) -> None:
        name = manifest["metadata"]["name"]
        self.claims.append(name)  # before the call, as for Jobs
        try:
            client.call(
                client.custom.create_namespaced_custom_object,
                DRA_GROUP,
                DRA_VERSION,
                self.settings.namespace,
                DRA_PLURAL,
                manifest,
                doing=f"create ResourceClaim {name}",
                deadline=deadline,
            )
        except ApiNotFound as exc:
            if namespace_missing(exc.message):
                raise
            self.deleted.add(name)
            raise ClusterError(
                f"the cluster at {client.host} serves no {DRA_GROUP}/{DRA_VERSION} "
                f"ResourceClaims ({exc.message or exc.reason}): --kts-gpu-request dra needs "
                "Kubernetes 1.34+ with DRA and NVIDIA's DRA driver (docs/kubernetes.md); or "
                "use another --kts-gpu-request"
            ) from None
        log.debug("created ResourceClaim %s", name)

    def delete_one(
        self, client: Client, kind: str, name: str, deadline: float, attempts: int | None
    ) -> None:
        """Delete one Job (with its pods) or ResourceClaim; gone already is fine."""
        try:
            if kind == "job":
                client.call(
                    client.batch.delete_namespaced_job,
                    name,
                    self.settings.namespace,
                    propagation_policy="Background",
                    doing=f"delete Job {name}",
                    deadline=deadline,
                    attempts=attempts,
                )
            else:
                client.call(
                    client.custom.delete_namespaced_custom_object,
                    DRA_GROUP,
                    DRA_VERSION,
                    self.settings.namespace,
                    DRA_PLURAL,
                    name,
                    doing=f"delete ResourceClaim {name}",
                    deadline=deadline,
                    attempts=attempts,
                )
        except ApiNotFound:
            pass
        self.deleted.add(name)

    def delete_claim_now(self, client: Client, name: str) -> None:
        """A finished phase's claim; what fails here is left to :meth:`delete_all`."""
        try:
            self.delete_one(client, "claim", name, time.monotonic() + knobs.REQUEST_TIMEOUT_S, 1)
        except ClusterError as exc:
            log.debug("deleting ResourceClaim %s failed (close() retries): %s", name, exc)

    def delete_all(self, client: Client | None, *, claims_only: bool = False) -> None:
        """Delete this run's Jobs (and their pods) and ResourceClaims, retrying for
        ``DELETE_BUDGET_S`` at most.

        What cannot be deleted in that time (or before a second Ctrl-C) is named, with the
        exact ``kubectl delete`` command, on stderr and as a warning: cleanup must neither hang
        nor mask the error. Once that was said, a later attempt (close()) gets one short try.
        """
        if client is None:
            return
        budget = knobs.DELETE_BUDGET_S
        attempts = None
        if self.left_behind:  # the server failed us already: do not make the user wait again
            budget, attempts = min(budget, knobs.REQUEST_TIMEOUT_S), 1
        deadline = time.monotonic() + budget
        why: dict[str, str] = {}
        created = [] if claims_only else [("job", n) for n in self.jobs]
        created += [("claim", n) for n in self.claims]
        try:
            for kind, name in created:
                if name in self.deleted:
                    continue
                if time.monotonic() >= deadline:
                    why.setdefault(name, "out of time")
                    continue
                try:
                    self.delete_one(client, kind, name, deadline, attempts)
                except ClusterError as exc:
                    why[name] = one_line(exc)
                except Exception as exc:  # never mask the error being reported
                    why[name] = connection_why(exc)
        finally:  # a second Ctrl-C ends the loop, not the report
            self._report_left(why, budget, claims_only)

    def _report_left(self, why: dict[str, str], budget: float, claims_only: bool) -> None:
        jobs = [] if claims_only else [n for n in self.jobs if n not in self.deleted]
        claims = [n for n in self.claims if n not in self.deleted]
        self.left_behind = jobs + claims
        if not self.left_behind:
            return
        ns = self.settings.namespace
        commands = []
        if jobs:
            commands.append(f"kubectl delete jobs -n {ns} --cascade=background " + " ".join(jobs))
        if claims:
            commands.append(f"kubectl delete resourceclaims -n {ns} " + " ".join(claims))
        counts = (jobs and f"{len(jobs)} Job(s)", claims and f"{len(claims)} ResourceClaim(s)")
        what = " and ".join(text for text in counts if text)
        reason = next((why[n] for n in self.left_behind if n in why), "interrupted")
        message = (
            f"pytest-kts could not delete {what} within {budget:.0f} s ({reason}); "
            f"delete them with: {'; '.join(commands)}"
        )
        # Straight to the terminal as well: a warning may be lost when the session is ending.
        print(f"pytest-kts: {message}", file=sys.__stderr__, flush=True)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
