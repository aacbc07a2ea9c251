"""Errors that say what happened on the cluster: a stuck pod, a phase past its deadline, a
failed Job, each with the pod's exit code, its log's tail and the events the cluster kept.

Failures are named from evidence only: "out of memory" when the container was OOM-killed
(reason ``OOMKilled``) or when the worker's own error event says CUDA/torch ran out of memory,
never from an exit code alone.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.backends.kubernetes.client import Client, one_line
from pytest_kts.backends.kubernetes.settings import CONTAINER, ClusterSettings
from pytest_kts.backends.kubernetes.state import TenantRun
from pytest_kts.errors import ClusterError, WorkerError


def events_text(client: Client | None, name: str) -> str:
    """The object's events, oldest first, one per line (best effort: one short try)."""
    if not name or client is None:
        return "  (none)"
    try:
        events = client.events(name)
    except Exception as exc:  # the error being reported matters more than its events
        return f"  (events unavailable: {one_line(exc)[:160]})"

    def when(event: Any) -> str:
        stamp = event.last_timestamp or event.event_time or event.first_timestamp
        return stamp.isoformat() if stamp is not None else ""

    lines = []
    for event in sorted(events, key=when)[-knobs.EVENTS_SHOWN :]:
        source = getattr(event.source, "component", None) or event.reporting_component or "?"
        count = f" (x{event.count})" if event.count and event.count > 1 else ""
        lines.append(
            f"  {event.type or '?'} {event.reason or '?'} ({source}){count}: "
            f"{one_line(event.message or '')}"
        )
    return "\n".join(lines) or "  (none)"


def stuck_reason(pod: Any) -> tuple[str, str, str] | None:
    """(kind, reason, message) when a pending pod will not start on its own, else None."""
    status = pod.status
    if status is None or (status.phase or "Pending") != "Pending":
        return None
    for cond in status.conditions or []:
        if (
            cond.type == "PodScheduled"
            and cond.status == "False"
            and cond.reason == "Unschedulable"
        ):
            return "unschedulable", "Unschedulable", cond.message or ""
    for cstatus in status.container_statuses or []:
        waiting = cstatus.state.waiting if cstatus.state is not None else None
        if waiting is not None and waiting.reason in knobs.STUCK_WAITING:
            return knobs.STUCK_WAITING[waiting.reason], waiting.reason, waiting.message or ""
    scheduled = any(cond.type == "PodScheduled" for cond in status.conditions or [])
    if not scheduled and not getattr(pod.spec, "node_name", None):
        # No scheduler has looked at it (a scheduler that did would say why it cannot).
        scheduler = getattr(pod.spec, "scheduler_name", None) or "default-scheduler"
        return "unscheduled", "not scheduled", f"no scheduler named {scheduler!r} took it"
    return None


def raise_stuck(
    client: Client, settings: ClusterSettings, run: TenantRun, kind: str, reason: str, message: str
) -> NoReturn:
    events = events_text(client, run.pod or "")
    where = f"pod {run.pod}" + (f" on node {run.node}" if run.node else "")
    if kind == "unschedulable":
        hint = settings.gpu.unschedulable_hint()
    elif kind == "unscheduled":
        hint = "is that scheduler installed and running? (kubectl get pods -A | grep scheduler)"
    elif kind == "image":
        hint = (
            f"the worker image {settings.image!r} cannot be pulled: build it "
            "(docker/Dockerfile), push it where the node can pull it or import it into the "
            "node's containerd (k3s ctr images import), and pass --kts-image"
        )
    else:
        hint = "the container cannot be created: see the events"
    raise ClusterError(
        f"tenant {run.tenant!r}: {where} is {reason}: {message.rstrip('. ') or '-'}; "
        f"{hint}.\n"
        f"Events of {run.pod}:\n{events}"
    )


def raise_timeout(client: Client, runs: dict[str, TenantRun], timeout: float) -> NoReturn:
    pending = [run for run in runs.values() if not run.finished]
    run = pending[0]
    events = events_text(client, run.pod or run.job)
    others = ", ".join(r.tenant for r in pending[1:])
    started = run.ready_ns is not None or run.reader.lines > 0
    what = f"Job {run.job} (pod {run.pod or '-'}) did not finish within {timeout:.0f} s" + (
        f" (nor did: {others})" if others else ""
    )
    if started:
        raise WorkerError(
            run.tenant,
            f"{what}: the worker started ({run.reader.lines} log lines) but hung or needs "
            "more time; raise --kts-timeout or look at its log.\nEvents:\n" + events,
            "\n".join(run.tail),
        )
    raise ClusterError(
        f"tenant {run.tenant!r}: {what} and printed nothing: the pod never started "
        f"running; events:\n{events}"
    )


def worker_error_event(run: TenantRun) -> dict[str, Any] | None:
    """The data of the worker's last ``KTS_EVENT error`` (kind, type, message), if it sent one."""
    for event in reversed(run.reader.events):
        if event.name == "error" and event.data.get("kind") != "protocol":
            return dict(event.data)
    return None


def raise_failed(client: Client, settings: ClusterSettings, run: TenantRun) -> NoReturn:
    state = None
    if run.pod:
        try:
            pod = client.call(
                client.core.read_namespaced_pod,
                run.pod,
                client.namespace,
                doing=f"read pod {run.pod}",
                attempts=2,
            )
            for status in pod.status.container_statuses or []:
                if status.name == CONTAINER and status.state is not None:
                    state = status.state.terminated
        except ClusterError:
            state = None
    exit_code = getattr(state, "exit_code", None)
    reason = getattr(state, "reason", None) or ""
    error = worker_error_event(run)
    oom_killed = reason == "OOMKilled"
    cuda_oom = error is not None and error.get("kind") == "oom"
    what = f"Job {run.job} failed ({run.job_reason or 'Failed'}: {run.job_message or '-'})"
    if state is not None:
        what += f"; container {CONTAINER!r} exited with code {exit_code} ({reason or '-'})"
    if error is not None and not oom_killed:
        kind = str(error.get("type") or error.get("kind") or "error")
        message = one_line(error.get("message") or "")
        what += f"; the worker reported {kind}" + (f": {message}" if message else "")
    if oom_killed:
        what += (
            f"; it went over its memory limit ({settings.memory_limit}): lower the "
            "tenant's size or raise the memory limit"
        )
    elif cuda_oom:
        what += "; CUDA ran out of memory: lower the tenant's size or run fewer co-tenants"
    elif exit_code == 4:
        what += f"; {settings.gpu.no_gpu_hint()}"
    elif exit_code == 2:
        what += "; the worker rejected its arguments: is the image the same version?"
    elif run.job_reason == "DeadlineExceeded":
        what += "; it ran past activeDeadlineSeconds: raise --kts-timeout"
    events = events_text(client, run.pod or "") if run.pod else "  (no pod)"
    job_events = events_text(client, run.job)
    raise WorkerError(
        run.tenant,
        f"{what}.\nEvents of pod {run.pod}:\n{events}\nEvents of Job {run.job}:\n{job_events}",
        "\n".join(run.tail),
        oom=oom_killed or cuda_oom,
    )
