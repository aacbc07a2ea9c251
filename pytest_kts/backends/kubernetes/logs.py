"""A thread per tenant follows its pod's log into the tenant's :class:`LineReader`.

The log endpoint answers 400 while the container is being created, so the thread retries; a
stream that drops or stays silent for ``LOG_IDLE_TIMEOUT_S`` (its read timeout) is reopened,
and the kubelet's timestamps (``timestamps=true``) drop the lines already seen. Every call has
a deadline (:class:`~.client.Client`); an abort shuts the open stream's socket.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone

from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.backends.kubernetes.client import Client, api
from pytest_kts.backends.kubernetes.errors import ApiBadRequest, ApiNotFound, ApiUnreachable
from pytest_kts.backends.kubernetes.settings import CONTAINER, LABEL_JOB
from pytest_kts.backends.kubernetes.state import TenantRun
from pytest_kts.errors import ClusterError
from pytest_kts.protocol import Event, Sample

log = logging.getLogger("pytest_kts.kubernetes")

_TIMESTAMP = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)


def parse_timestamp_ns(text: str) -> int | None:
    """RFC 3339 (kubelet log prefix, ``...T12:00:00.123456789Z``) to epoch nanoseconds."""
    match = _TIMESTAMP.match(text)
    if not match:
        return None
    base, frac, zone = match.groups()
    try:
        dt = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    seconds = int(dt.astimezone(timezone.utc).timestamp())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def take(run: TenantRun, raw: bytes, skip_at_last: int) -> int:
    """Feed one log line (``<RFC3339Nano> <text>``) unless a reopened stream repeats it."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    stamp, sep, rest = text.partition(" ")
    ts = parse_timestamp_ns(stamp) if sep else None
    if ts is None:
        rest = text
    else:
        if ts < run.last_ts:
            return skip_at_last
        if ts == run.last_ts:
            if skip_at_last > 0:
                return skip_at_last - 1
            run.at_last_ts += 1
        else:
            run.last_ts, run.at_last_ts = ts, 1
            skip_at_last = 0
    record = run.reader.feed(rest)
    if not isinstance(record, Sample) and rest.strip():
        run.tail.append(rest)
    if isinstance(record, Event) and record.name == "ready" and run.ready_ns is None:
        run.ready_ns = ts if ts is not None else time.time_ns()
    return skip_at_last


def _find_pod(client: Client, run: TenantRun, deadline: float) -> bool:
    """Learn the Job's pod name; the main thread learns pods only between watch segments."""
    delay = 0.1
    while not run.pod_known.is_set():
        if run.stop.is_set() or time.monotonic() > deadline:
            return False
        try:
            pods = client.call(
                client.core.list_namespaced_pod,
                client.namespace,
                label_selector=f"{LABEL_JOB}={run.job}",
                doing=f"list the pod of Job {run.job}",
                deadline=deadline,
                attempts=1,
                track=False,
            ).items
        except ApiUnreachable:
            pods = []  # a hiccup of the API server: try again (the main thread judges it)
        if pods:
            run.pod = pods[0].metadata.name
            run.pod_known.set()
        else:
            run.stop.wait(delay)
            delay = min(delay * 2, knobs.LOG_RETRY_MAX_S)
    return True


def follow_log(client: Client, run: TenantRun, deadline: float) -> None:
    """Thread: follow the pod's log into the tenant's LineReader until the container ends."""
    names = api()
    delay = 0.1
    try:
        if not _find_pod(client, run, deadline):
            return
        while not run.stop.is_set() and time.monotonic() < deadline + knobs.LOG_DRAIN_S:
            try:
                response = client.call(
                    client.core.read_namespaced_pod_log,
                    run.pod,
                    client.namespace,
                    container=CONTAINER,
                    follow=True,
                    timestamps=True,
                    _preload_content=False,
                    doing=f"follow the log of pod {run.pod}",
                    attempts=1,
                    track=False,
                    read_s=knobs.LOG_IDLE_TIMEOUT_S,
                )
            except (ApiBadRequest, ApiNotFound) as exc:
                # 400: the container is still being created (or cannot start: the main thread
                # reports that). 404: the pod is not visible yet or gone.
                run.log_waits += 1
                if run.finished and isinstance(exc, ApiNotFound):
                    return
                run.stop.wait(delay)
                delay = min(delay * 2, knobs.LOG_RETRY_MAX_S)
                continue
            except ApiUnreachable:
                run.stop.wait(delay)
                delay = min(delay * 2, knobs.LOG_RETRY_MAX_S)
                continue
            delay = 0.1
            run.log_opens += 1
            run.response = response
            run.partial = b""
            skip_at_last = run.at_last_ts
            ended = False
            try:
                buffer = b""
                while True:
                    chunk = response.read1(65536)
                    if not chunk:
                        ended = True
                        break
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for raw in lines:
                        skip_at_last = take(run, raw, skip_at_last)
                run.partial = buffer
            except (*names.transport_errors, ValueError, AttributeError):
                # Idle for LOG_IDLE_TIMEOUT_S, dropped, or shut by an abort: reopen below.
                pass
            finally:
                run.response = None
                try:
                    response.release_conn()
                except Exception:
                    log.debug("releasing a log stream failed", exc_info=True)
            if run.stop.is_set():
                return
            if ended and container_ended(client, run, deadline + knobs.LOG_DRAIN_S):
                if run.partial:
                    take(run, run.partial, skip_at_last)
                    run.partial = b""
                return
    except BaseException as exc:  # reported by the main thread
        run.error = exc
    finally:
        run.done.set()


def container_ended(client: Client, run: TenantRun, deadline: float) -> bool:
    """Whether the log ended because the container did (not because a stream dropped)."""
    try:
        pod = client.call(
            client.core.read_namespaced_pod,
            run.pod,
            client.namespace,
            doing=f"read pod {run.pod}",
            deadline=deadline,
            attempts=1,
            track=False,
        )
    except ApiNotFound:
        return True  # the pod is gone
    except ClusterError:  # no answer, or a refusal: the stream is reopened and asks again
        return False
    if (pod.status.phase or "") in ("Succeeded", "Failed"):
        return True
    for status in pod.status.container_statuses or []:
        if status.name == CONTAINER and status.state is not None and status.state.terminated:
            return True
    return False


def abort(runs: dict[str, TenantRun]) -> None:
    """Stop the log threads: set their flags, shut their sockets, join them."""
    for run in runs.values():
        run.stop.set()
        response = run.response
        if response is not None:
            try:
                response.shutdown()
            except Exception:
                log.debug("shutting a log stream failed", exc_info=True)
    for run in runs.values():
        if run.thread is not None and run.thread.is_alive():
            # A thread inside an ordinary call ends when that call's read timeout does.
            run.thread.join(knobs.CONNECT_TIMEOUT_S + knobs.REQUEST_TIMEOUT_S + 1)
