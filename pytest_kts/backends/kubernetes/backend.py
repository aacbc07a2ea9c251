"""The Kubernetes backend: every tenant of every phase runs as one Job on a (time-sliced) GPU.

See the package docstring for the phase's course, the shared phase's start barrier and the
co-location checks; this module holds the backend's state across phases and its cleanup.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_kts import colocation
from pytest_kts.backends.base import Backend, PhaseOutput, PhasePlan, TenantSpec
from pytest_kts.backends.kubernetes import diagnose, logs
from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.backends.kubernetes.client import (
    Client,
    ClusterClients,
    connect,
    one_line,
)
from pytest_kts.backends.kubernetes.manifest import render_claim, render_job
from pytest_kts.backends.kubernetes.objects import CreatedObjects
from pytest_kts.backends.kubernetes.settings import (
    LABEL_MANAGED_BY,
    LABEL_PHASE,
    LABEL_ROUND,
    LABEL_RUN_ID,
    MANAGED_BY,
    ClusterSettings,
    claim_name,
    cluster_settings,
    job_name,
    label_value,
)
from pytest_kts.backends.kubernetes.state import TenantRun
from pytest_kts.backends.kubernetes.watch import PhaseWatch
from pytest_kts.errors import ClusterError, ConfigError, WorkerError
from pytest_kts.protocol import LineReader

log = logging.getLogger("pytest_kts.kubernetes")

_PIN_HINT = (
    "Pin the pods to one single-GPU node with --kts-node NODE (the device plugin's default "
    "'distributed' policy spreads time-sliced replicas over a node's GPUs), or give the node "
    "one shared GPU (see docs/kubernetes.md)."
)
_APART_HINT = (
    "their pods started too far apart. Pods that wait for an image or a free GPU replica do "
    "this: pre-pull the image and check the node's replicas."
)


@dataclass(frozen=True)
class PhaseObjects:
    """What one phase creates, and when it runs out (``deadline``: monotonic seconds)."""

    started_ns: int
    deadline: float
    start_at_ns: int | None
    max_duration_s: float | None
    claim: dict[str, Any] | None  # the ResourceClaim its pods share (DRA)
    jobs: dict[str, dict[str, Any]]  # tenant -> Job


class KubernetesBackend(Backend):
    """Runs each tenant of each phase as a Kubernetes Job and collects its log."""

    name = "kubernetes"
    checks_colocation = True

    def __init__(self, settings: ClusterSettings, *, clients: ClusterClients | None = None) -> None:
        self.settings = settings
        self._client = Client(clients, settings) if clients is not None else None
        self._own_clients = clients is None
        self._tenants: dict[str, TenantSpec] = {}
        self._device = "auto"
        self._seq = 0
        self._objects = CreatedObjects(settings)  # every Job and claim asked for, in order
        self._closed = False
        self._startup_s: dict[str, float] = {}
        self._solo_period_s: dict[str, float] = {}
        self._solo_uuid: dict[str, str] = {}
        self._phases: list[dict[str, Any]] = []
        self._relists = 0
        self._notes: list[str] = []
        self._metas: dict[str, dict[str, Any]] = {}

    # -- Backend interface ---------------------------------------------------------------

    def start(self, tenants: Sequence[TenantSpec], device: str) -> None:
        self._take(tenants, device)
        if self._client is None:
            self._client = Client(connect(self.settings), self.settings)

    def _take(self, tenants: Sequence[TenantSpec], device: str) -> None:
        names = [t.name for t in tenants]
        if len(set(names)) != len(names):
            raise ConfigError(f"tenant names must be unique, got {names}")
        if device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"device must be auto, cuda or cpu, got {device!r}")
        self._tenants = {t.name: t for t in tenants}
        self._device = device

    def preview(
        self,
        tenants: Sequence[TenantSpec],
        device: str,
        plans: Sequence[PhasePlan],
        timeout_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """Every object :meth:`run_phase` would create for ``plans``, in order (the dry run):
        no API call, no client. The shared phase's start instant is counted from now."""
        self._take(tenants, device)
        out: list[dict[str, Any]] = []
        for plan in plans:
            objects = self._render_phase(plan, timeout_s or self.settings.timeout_s)
            out += [objects.claim] if objects.claim is not None else []
            out += objects.jobs.values()
        return out

    def run_phase(self, plan: PhasePlan, timeout_s: float) -> PhaseOutput:
        if self._closed:
            raise ClusterError("the Kubernetes backend is closed; start a new one")
        if self._client is None:
            raise ClusterError("run_phase before start(): call start(tenants, device) first")
        client = self._client
        timeout = float(timeout_s) if timeout_s and timeout_s > 0 else self.settings.timeout_s
        objects = self._render_phase(plan, timeout)
        started_ns, deadline = objects.started_ns, objects.deadline
        start_at_ns, max_duration = objects.start_at_ns, objects.max_duration_s
        runs: dict[str, TenantRun] = {}
        claim = None if objects.claim is None else str(objects.claim["metadata"]["name"])
        try:
            if objects.claim is not None:
                self._objects.create_claim(client, objects.claim, deadline)
            for tenant, manifest in objects.jobs.items():
                runs[tenant] = self._create(manifest, tenant, deadline, plan)
            for run in runs.values():
                run.thread = threading.Thread(
                    target=logs.follow_log,
                    args=(client, run, deadline),
                    daemon=True,
                    name=f"kts-log-{run.job}",
                )
                run.thread.start()
            watch = PhaseWatch(client, self.settings, runs, self._selector(plan), deadline)
            try:
                watch.wait(timeout)
            finally:
                self._relists += watch.relists
            watch.refresh_pods()
            self._drain(runs)
        except KeyboardInterrupt:
            # Ctrl-C, or SIGTERM (pytest_kts.signals raises it as KeyboardInterrupt): the
            # session is ending, close() may never run. Other errors leave the Jobs to close().
            logs.abort(runs)
            if not self.settings.keep_jobs:
                self._objects.delete_all(self._client)
            raise
        finally:
            logs.abort(runs)
        ended_ns = time.time_ns()
        if claim is not None:
            # The phase is over: free its GPU for the next phase's claim (kept Jobs or not).
            self._objects.delete_claim_now(client, claim)
        record = self._record(plan, runs, start_at_ns)
        if plan.phase == "shared":
            self._check_colocation(plan, runs, record)
            self._trim_to_overlap(plan, runs, record)
        else:
            self._learn_from_solo(runs)
        readers = {t: runs[t].reader for t in plan.tenants}
        short = [t for t in plan.measured if len(readers[t].samples) < plan.iterations[t]]
        return PhaseOutput(
            plan=plan,
            readers=readers,
            started_ns=started_ns,
            ended_ns=ended_ns,
            cut=bool(short) and max_duration is not None,
            sent_ns=started_ns,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.settings.keep_jobs:
                self._objects.delete_all(self._client)
            elif self._objects.claims:
                self._objects.delete_all(self._client, claims_only=True)  # it would hold the GPU
        finally:
            if self._client is not None and self._own_clients:
                self._client.close()

    def facts(self) -> dict[str, Any]:
        """Where tenants ran: nodes, pods and GPU UUIDs per tenant and phase, and notes.

        ``tenants`` holds each tenant's latest ``KTS_META`` facts (the runner reads it, as
        from the local backend); ``gpu_uuids`` every UUID seen, ``gpu_uuids_by_tenant``
        them per tenant and phase; ``phases`` one record per phase run.
        """
        by_tenant: dict[str, dict[str, list[str]]] = {}
        pods: dict[str, list[str]] = {}
        nodes: set[str] = set()
        for phase in self._phases:
            for tenant, info in phase["tenants"].items():
                if info.get("gpu_uuid"):
                    found = by_tenant.setdefault(tenant, {}).setdefault(phase["phase"], [])
                    if info["gpu_uuid"] not in found:
                        found.append(info["gpu_uuid"])
                if info.get("pod"):
                    pods.setdefault(tenant, []).append(info["pod"])
                if info.get("node"):
                    nodes.add(info["node"])
        uuids = sorted({u for phases in by_tenant.values() for us in phases.values() for u in us})
        return {
            "backend": self.name,
            "device": self._device,
            "namespace": self.settings.namespace,
            "run_id": self.settings.run_id,
            "image": self.settings.image,
            "gpu_request": self.settings.gpu.mode,
            "gpu_request_detail": self.settings.gpu.describe(),
            "claims": list(self._objects.claims),
            "node_pinned": self.settings.node,
            "nodes": sorted(nodes),
            "tenants": copy.deepcopy(self._metas),
            "pods": pods,
            "gpu_uuids": uuids,
            "gpu_uuids_by_tenant": by_tenant,
            "phases": copy.deepcopy(self._phases),
            "watch_relists_after_410": self._relists,
            "api_failures": self._client.failures if self._client is not None else 0,
            "notes": list(self._notes),
        }

    def check_colocated(self) -> None:
        """Raise :class:`ColocationError` if a shared phase so far saw two GPUs.

        ``run_phase`` already checks every shared phase; this answers the runner's question
        after a round the same way the local backend does.
        """
        for phase in self._phases:
            if phase["phase"] == "shared":
                colocation.check_one_gpu(
                    {t: i.get("gpu_uuid") for t, i in phase["tenants"].items()},
                    "Pin the pods to one single-GPU node with --kts-node",
                )

    # -- Jobs ----------------------------------------------------------------------------

    def _render_phase(self, plan: PhasePlan, timeout: float) -> PhaseObjects:
        """The phase's claim (DRA) and Jobs, and its timings: start barrier, time share."""
        unknown = [t for t in plan.tenants if t not in self._tenants]
        if unknown:
            raise ConfigError(f"phase names tenants that were never started: {unknown}")
        if plan.phase not in ("solo", "shared"):
            raise ConfigError(f"phase must be solo or shared, got {plan.phase!r}")
        self._seq += 1
        started_ns = time.time_ns()
        deadline = time.monotonic() + timeout
        start_at_ns: int | None = None
        min_duration: float | None = None
        lead = self._start_lead_s(plan.tenants)
        if plan.phase == "shared":
            start_at_ns = started_ns + int(lead * 1e9)
            min_duration = self._min_duration_s(plan, lead)
            deadline += lead
        # The phase's time share counts from now; pods spend about ``lead`` starting.
        max_duration = None if plan.max_seconds is None else max(plan.max_seconds - lead, 1.0)
        if max_duration is not None and min_duration is not None:
            min_duration = min(min_duration, max_duration)
        claim: dict[str, Any] | None = None
        if self.settings.gpu.claims_per_phase and self._device != "cpu":
            # One claim for the phase's pods: co-tenants get one GPU by construction.
            name = claim_name(self.settings.run_id, self._seq, plan.phase)
            claim = render_claim(self.settings, name=name, phase=plan.phase, round=plan.round)
        jobs = {
            tenant: render_job(
                self.settings,
                self._tenants[tenant],
                device=self._device,
                name=job_name(self.settings.run_id, self._seq, plan.phase, tenant),
                phase=plan.phase,
                round=plan.round,
                iterations=int(plan.iterations[tenant]),
                start_at_ns=start_at_ns,
                min_duration_s=min_duration,
                deadline_s=deadline - time.monotonic(),
                max_duration_s=max_duration,
                claim=None if claim is None else claim["metadata"]["name"],
            )
            for tenant in plan.tenants
        }
        return PhaseObjects(started_ns, deadline, start_at_ns, max_duration, claim, jobs)

    def _create(
        self, manifest: dict[str, Any], tenant: str, deadline: float, plan: PhasePlan
    ) -> TenantRun:
        assert self._client is not None
        name = manifest["metadata"]["name"]
        # The pod's log speaks for this tenant, phase and round only: a line naming anything
        # else (a workload's print, in a log that merges stdout and stderr) is misaddressed.
        reader = LineReader.bound(tenant, plan.phase, plan.round)
        run = TenantRun(tenant=tenant, job=name, created_ns=time.time_ns(), reader=reader)
        self._objects.create_job(self._client, manifest, deadline)
        log.debug("created Job %s for tenant %s", name, tenant)
        return run

    @property
    def left_behind(self) -> list[str]:
        """Jobs (and claims) that cleanup could not delete."""
        return self._objects.left_behind

    def _selector(self, plan: PhasePlan) -> str:
        return ",".join(
            [
                f"{LABEL_MANAGED_BY}={MANAGED_BY}",
                f"{LABEL_RUN_ID}={label_value(self.settings.run_id)}",
                f"{LABEL_PHASE}={plan.phase}",
                f"{LABEL_ROUND}={plan.round}",
            ]
        )

    def _drain(self, runs: dict[str, TenantRun]) -> None:
        """After the Jobs ended: wait for the log streams, then turn failures into errors."""
        assert self._client is not None
        now = time.monotonic()
        for run in runs.values():
            # A failed pod may never have had a log; its stream is not worth a long wait.
            until = now + (knobs.LOG_DRAIN_S if run.job_state == "complete" else 5.0)
            if run.thread is not None:
                run.thread.join(max(0.0, until - time.monotonic()))
        for run in runs.values():
            if run.job_state == "failed":
                diagnose.raise_failed(self._client, self.settings, run)
        for run in runs.values():
            if run.error is not None:
                raise ClusterError(
                    f"tenant {run.tenant!r}: reading the log of pod {run.pod} failed: "
                    f"{one_line(run.error)}"
                )
            if run.thread is not None and run.thread.is_alive():
                raise ClusterError(
                    f"tenant {run.tenant!r}: Job {run.job} completed but its log stream did not "
                    f"end within {knobs.LOG_DRAIN_S:.0f} s; the API server or kubelet is slow"
                )
            if not run.reader.samples:
                raise WorkerError(
                    run.tenant,
                    f"Job {run.job} completed but its log has no KTS_APP sample lines "
                    f"({run.reader.lines} lines, {run.reader.foreign} foreign, "
                    f"{run.reader.malformed} malformed); is the image's worker this version?",
                    "\n".join(run.tail),
                )

    # -- shared-phase coordination ----------------------------------------------------------

    def _start_lead_s(self, tenants: Sequence[str]) -> float:
        seen = [self._startup_s[t] for t in tenants if t in self._startup_s]
        if not seen:
            return knobs.START_LEAD_DEFAULT_S
        lead = max(seen) * knobs.START_LEAD_FACTOR + knobs.START_LEAD_MARGIN_S
        return min(max(lead, knobs.START_LEAD_MARGIN_S), knobs.START_LEAD_MAX_S)

    def _min_duration_s(self, plan: PhasePlan, lead_s: float) -> float:
        """How long every co-tenant keeps running: the slowest solo target, with margins."""
        estimates = [
            self._solo_period_s[t] * int(plan.iterations[t])
            for t in plan.tenants
            if t in self._solo_period_s
        ]
        slowest = max(estimates, default=0.0) * knobs.SHARED_SLOWDOWN_MARGIN
        return max(slowest, knobs.SHARED_MIN_WINDOW_S + knobs.SHARED_LATE_SHARE * lead_s)

    def _learn_from_solo(self, runs: dict[str, TenantRun]) -> None:
        for tenant, run in runs.items():
            if run.ready_ns is not None:
                startup = (run.ready_ns - run.created_ns) / 1e9
                self._startup_s[tenant] = max(startup, 0.0)
            samples = run.reader.samples
            if samples:
                first = min(s.start_ns for s in samples)
                last = max(s.end_ns for s in samples)
                self._solo_period_s[tenant] = (last - first) / 1e9 / len(samples)
            if run.gpu_uuid:
                self._solo_uuid[tenant] = run.gpu_uuid

    # -- facts, co-location and overlap -----------------------------------------------------

    def _record(
        self, plan: PhasePlan, runs: dict[str, TenantRun], start_at_ns: int | None
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "phase": plan.phase,
            "round": plan.round,
            "start_at_ns": start_at_ns,
            "tenants": {},
        }
        for tenant, run in runs.items():
            meta = run.meta
            if meta:
                self._metas[tenant] = {**meta, "pod": run.pod, "node": run.node}
            info: dict[str, Any] = {
                "job": run.job,
                "pod": run.pod,
                "node": run.node,
                "gpu_uuid": run.gpu_uuid,
                "device": meta.get("device"),
                "gpu_name": meta.get("gpu_name"),
                "samples": len(run.reader.samples),
                "log_opens": run.log_opens,
                "log_waits": run.log_waits,
            }
            if start_at_ns is not None and run.reader.samples:
                first = min(s.start_ns for s in run.reader.samples)
                info["late_start_s"] = round(max(0, first - start_at_ns) / 1e9, 3)
            record["tenants"][tenant] = info
        self._phases.append(record)
        return record

    def _check_colocation(
        self, plan: PhasePlan, runs: dict[str, TenantRun], record: dict[str, Any]
    ) -> None:
        where = {t: f"node {runs[t].node or '?'}, pod {runs[t].pod}" for t in plan.tenants}
        try:
            found = colocation.verify_shared_phase(
                plan.round,
                {t: runs[t].gpu_uuid for t in plan.tenants},
                where,
                self._solo_uuid,
                hint=_PIN_HINT,
            )
        except Exception:
            record["colocation"] = "failed: different GPUs"
            raise
        record["colocation"] = found.status
        notes = found.notes
        nodes = {t: runs[t].node for t in plan.tenants}
        if found.status.startswith("not checked") and len(set(nodes.values())) > 1:
            notes = [f"{notes[0]}; the pods ran on different nodes: {nodes}"]
        self._notes.extend(notes)

    def _trim_to_overlap(
        self, plan: PhasePlan, runs: dict[str, TenantRun], record: dict[str, Any]
    ) -> None:
        """Keep only the window in which every tenant was measuring."""
        shared = {
            t: [s for s in runs[t].reader.samples if s.phase == "shared"] for t in plan.tenants
        }
        _, window = colocation.trim_to_overlap(plan.round, shared, hint=_APART_HINT)
        if window is None:
            return
        begin, end = window
        record["overlap_s"] = round((end - begin) / 1e9, 3)
        for tenant in plan.tenants:
            reader = runs[tenant].reader
            kept = [s for s in reader.samples if s.start_ns >= begin and s.end_ns <= end]
            dropped = len(reader.samples) - len(kept)
            reader.samples[:] = kept
            record["tenants"][tenant]["samples"] = len(kept)
            record["tenants"][tenant]["dropped_outside_overlap"] = dropped


def make_cluster_backend(run: Any) -> KubernetesBackend:
    """The backend for a ``--kts-cluster`` run (see :func:`cluster_settings`)."""
    return KubernetesBackend(cluster_settings(run))
