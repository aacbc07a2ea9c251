"""One tenant's Job in one phase: what the watch, the log thread and the diagnosis share."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pytest_kts.backends.kubernetes.settings import TAIL_LINES
from pytest_kts.protocol import LineReader


@dataclass
class TenantRun:
    """One tenant's Job in one phase, and what its log said."""

    tenant: str
    job: str
    created_ns: int
    reader: LineReader = field(default_factory=LineReader)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    pod: str | None = None
    node: str | None = None
    pod_known: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    response: Any = None  # the open log stream, so that an abort can shut it
    error: BaseException | None = None
    job_state: str = "active"  # active | complete | failed
    job_reason: str = ""
    job_message: str = ""
    running: bool = False  # the pod was seen past Pending
    stuck_since: float | None = None
    no_pod_since: float | None = None
    ready_ns: int | None = None  # kubelet timestamp of the worker's "ready"
    last_ts: int = -1
    at_last_ts: int = 0
    partial: bytes = b""
    log_opens: int = 0
    log_waits: int = 0  # answers "container is waiting to start"

    @property
    def finished(self) -> bool:
        return self.job_state != "active"

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.reader.metas[-1].facts) if self.reader.metas else {}

    @property
    def gpu_uuid(self) -> str | None:
        value = self.meta.get("gpu_uuid")
        return str(value) if value else None
