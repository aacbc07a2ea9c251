"""Waiting for a phase's Jobs: a watch in short segments, the pods checked in between.

A Job is done when its condition ``Complete`` or ``Failed`` is ``"True"``. A watch that ends in
``410 Gone`` is re-listed and resumed; one that drops or goes silent past its read timeout is
resumed from the last resourceVersion. Between segments the pods are listed: one that stays
unschedulable or cannot pull its image, or a Job that makes no pod, ends the phase with the
events. Every call has a deadline; an API server that stops answering ends the phase with one
line naming it and the call in flight (:class:`~.errors.ApiUnreachable`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from pytest_kts.backends.kubernetes import diagnose
from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.backends.kubernetes.client import Client, one_line
from pytest_kts.backends.kubernetes.errors import ApiGone, ApiUnreachable
from pytest_kts.backends.kubernetes.settings import LABEL_JOB, ClusterSettings
from pytest_kts.backends.kubernetes.state import TenantRun
from pytest_kts.errors import ClusterError

log = logging.getLogger("pytest_kts.kubernetes")


class PhaseWatch:
    """Follows the Jobs of one phase (``runs``, selected by ``selector``) to their end."""

    def __init__(
        self,
        client: Client,
        settings: ClusterSettings,
        runs: dict[str, TenantRun],
        selector: str,
        deadline: float,
    ) -> None:
        self.client = client
        self.settings = settings
        self.runs = runs
        self.selector = selector
        self.deadline = deadline
        self.by_job = {run.job: run for run in runs.values()}
        self.relists = 0  # watches that ended in 410 Gone

    def wait(self, timeout: float) -> None:
        """Return when every Job has condition Complete or Failed "True"; raise otherwise."""
        client = self.client
        resource_version: str | None = None
        while True:
            if resource_version is None:
                listing = client.call(
                    client.batch.list_namespaced_job,
                    client.namespace,
                    label_selector=self.selector,
                    doing="list the phase's Jobs",
                    deadline=self.deadline,
                )
                for job in listing.items or []:
                    self._update_job(job)
                resource_version = listing.metadata.resource_version
            if all(run.finished for run in self.runs.values()):
                return
            self.check_pods()
            for run in self.runs.values():
                if run.error is not None:
                    raise ClusterError(
                        f"tenant {run.tenant!r}: reading the log of pod {run.pod} failed: "
                        f"{one_line(run.error)}"
                    )
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                if client.failing_since is not None:
                    # The last calls got no answer: that, not the workers, is the news.
                    raise ApiUnreachable(
                        f"the Kubernetes API server at {client.host} stopped answering "
                        f"({client.last_failure}) and the phase ran out of its {timeout:.0f} s; "
                        "check that the API server is up and reachable"
                    )
                diagnose.raise_timeout(client, self.runs, timeout)
            settled = all(run.running or run.finished for run in self.runs.values())
            longest = knobs.WATCH_SEGMENT_S if settled else knobs.WATCH_SEGMENT_PENDING_S
            segment = max(1, min(longest, math.ceil(remaining)))
            assert resource_version is not None
            try:
                for event in client.watch_jobs(self.selector, resource_version, segment):
                    if event.get("type") == "BOOKMARK":
                        resource_version = event.get("resource_version") or resource_version
                        continue
                    obj = event.get("object")
                    meta = getattr(obj, "metadata", None)
                    if meta is not None and meta.resource_version:
                        resource_version = meta.resource_version
                    if event.get("type") == "DELETED" and meta is not None:
                        self._deleted(meta.name)
                        continue
                    self._update_job(obj)
                    if all(run.finished for run in self.runs.values()):
                        break
            except ApiGone:
                # The resourceVersion is too old (compacted): list again and resume.
                log.debug("job watch expired (410 Gone); re-listing")
                self.relists += 1
                resource_version = None
            except ApiUnreachable as exc:
                # A watch that dropped or went silent: resume from the last resourceVersion.
                # The calls between segments retry and give up (raising) if the server is gone.
                log.debug("job watch ended (%s); resuming", exc)
                time.sleep(0.2)

    def _deleted(self, name: str) -> None:
        run = self.by_job.get(name)
        if run is not None and not run.finished:
            raise ClusterError(
                f"tenant {run.tenant!r}: Job {run.job} was deleted by someone "
                "else before it finished; is another pytest-kts run sharing "
                f"namespace {self.settings.namespace!r}?"
            )

    def _update_job(self, job: Any) -> None:
        meta = getattr(job, "metadata", None)
        run = self.by_job.get(getattr(meta, "name", None) or "")
        if run is None or run.finished:
            return
        status = getattr(job, "status", None)
        for cond in getattr(status, "conditions", None) or []:
            if cond.status != "True":
                continue
            if cond.type == "Complete":
                run.job_state = "complete"
            elif cond.type == "Failed":
                run.job_state = "failed"
            else:
                continue
            run.job_reason = cond.reason or ""
            run.job_message = cond.message or ""
            return

    def refresh_pods(self) -> list[tuple[TenantRun, Any]]:
        """List the phase's pods; learn each tenant's pod name and node."""
        client = self.client
        pods = (
            client.call(
                client.core.list_namespaced_pod,
                client.namespace,
                label_selector=self.selector,
                doing="list the phase's pods",
                deadline=self.deadline,
            ).items
            or []
        )
        found = []
        for pod in pods:
            run = self.by_job.get((pod.metadata.labels or {}).get(LABEL_JOB, ""))
            if run is None:
                continue
            run.pod = pod.metadata.name
            run.node = getattr(pod.spec, "node_name", None) or run.node
            run.running = (getattr(pod.status, "phase", None) or "Pending") != "Pending"
            run.pod_known.set()
            found.append((run, pod))
        return found

    def check_pods(self) -> None:
        """Fail a pod that will not start on its own, or a Job that makes no pod."""
        seen: set[str] = set()
        now = time.monotonic()
        grace = self.settings.pending_grace_s
        for run, pod in self.refresh_pods():
            seen.add(run.job)
            stuck = None if run.finished else diagnose.stuck_reason(pod)
            if stuck is None:
                run.stuck_since = None
                continue
            if run.stuck_since is None:
                run.stuck_since = now
            if now - run.stuck_since >= grace:
                diagnose.raise_stuck(self.client, self.settings, run, *stuck)
        for run in self.runs.values():
            if run.job in seen or run.finished:
                run.no_pod_since = None
                continue
            if run.no_pod_since is None:
                run.no_pod_since = now
            elif now - run.no_pod_since >= grace:
                events = diagnose.events_text(self.client, run.job)
                raise ClusterError(
                    f"tenant {run.tenant!r}: Job {run.job} made no pod in "
                    f"{now - run.no_pod_since:.0f} s (quota, admission or a missing "
                    f"ServiceAccount?); events of the Job:\n{events}"
                )
