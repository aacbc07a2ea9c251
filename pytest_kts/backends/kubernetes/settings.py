"""What the Kubernetes backend is told and the names it gives: :class:`ClusterSettings`,
labels, tunables (timeouts, barrier margins) and DNS-safe names.

The tunables are module attributes read at call time (``knobs.X``), so a test can shrink
them with ``monkeypatch.setattr``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from pytest_kts.backends.kubernetes.gpu_request import GpuRequest
from pytest_kts.constants import WORKER_MODULE
from pytest_kts.errors import ConfigError

MANAGED_BY = "pytest-kts"
CONTAINER = "worker"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN_ID = "kts.run-id"
LABEL_TENANT = "kts.tenant"
LABEL_PHASE = "kts.phase"
LABEL_ROUND = "kts.round"
LABEL_JOB = "kts.job"
ANNOTATION_TENANT = "kts.tenant"

# Request timeouts (seconds). Every call to the API server carries one (client.Client).
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0  # read timeout of one ordinary call (our lists are small)
MIN_REQUEST_TIMEOUT_S = 1.0  # a call near its deadline still gets this long
REACH_TIMEOUT_S = 5.0
# Bounded retries of a call the server did not answer, or answered 429/5xx: attempts, and the
# backoff between them (doubling, capped; a 429's Retry-After is honoured up to the cap).
API_ATTEMPTS = 4
API_BACKOFF_S = 0.5
API_BACKOFF_MAX_S = 8.0
WATCH_SLACK_S = 5.0  # a watch segment's read timeout: its timeoutSeconds + this
# Cleanup: how long deleting the run's Jobs may keep retrying before it prints the command.
DELETE_BUDGET_S = 30.0
# Server-side timeoutSeconds of one Job watch; the pods are checked between two watches, every
# second while one is not running yet (to catch a stuck one), less often once all run.
WATCH_SEGMENT_PENDING_S = 1
WATCH_SEGMENT_S = 5
LOG_IDLE_TIMEOUT_S = 30.0  # a silent log stream is reopened after this (deduplicated)
LOG_RETRY_MAX_S = 2.0
LOG_DRAIN_S = 30.0  # after the Jobs finished, how long the log streams may take to end
# The shared phase's start barrier and background load (see the module docstring).
START_LEAD_DEFAULT_S = 20.0
START_LEAD_FACTOR = 1.5
START_LEAD_MARGIN_S = 2.0
START_LEAD_MAX_S = 300.0
SHARED_SLOWDOWN_MARGIN = 2.0
# Co-tenants do not wake at the same microsecond, and one may start late (its pod was slower
# than any solo pod): every co-tenant keeps running at least this long, plus a share of the lead.
SHARED_MIN_WINDOW_S = 1.0
SHARED_LATE_SHARE = 0.25
# Finished Jobs: removed by the TTL controller if close() never ran; longer when kept on purpose.
TTL_S = 600
TTL_KEPT_S = 86_400
DEADLINE_SLACK_S = 120
TAIL_LINES = 30
EVENTS_SHOWN = 12


# Container states in which a pod will not start on its own (kubelet reasons).
STUCK_WAITING = {
    "ErrImagePull": "image",
    "ImagePullBackOff": "image",
    "InvalidImageName": "image",
    "ErrImageNeverPull": "image",
    "CreateContainerConfigError": "config",
    "CreateContainerError": "config",
    "RunContainerError": "config",
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def _new_run_id() -> str:
    return uuid.uuid4().hex[:10]


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how tenants run as Jobs. The plugin builds it from ``--kts-*`` options.

    ``timeout_s`` bounds a phase when the runner gives none. ``pending_grace_s`` is how long a
    pod may stay unschedulable or fail to pull its image before the phase fails (a scheduler
    or a registry may recover from a brief hiccup). ``worker_command`` is what runs before the
    worker's arguments in the container.
    """

    namespace: str = "kts"
    image: str = "pytest-kts-worker:0.2.0"  # the package version (tests keep them equal)
    node: str | None = None
    runtime_class: str | None = "nvidia"
    timeout_s: float = 600.0
    keep_jobs: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    gpu: GpuRequest = field(default_factory=GpuRequest)  # how each pod asks for its GPU
    run_id: str = field(default_factory=_new_run_id)
    worker_command: tuple[str, ...] = ("python", "-m", WORKER_MODULE)
    image_pull_policy: str = "IfNotPresent"
    cpu_request: str = "1"
    memory_request: str = "2Gi"
    memory_limit: str | None = "16Gi"
    pending_grace_s: float = 60.0

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise ConfigError(
                f"namespace {self.namespace!r} is not a valid Kubernetes namespace name "
                "(lower-case letters, digits and '-', at most 63): fix --kts-namespace"
            )
        if not self.image.strip():
            raise ConfigError("the worker image is empty: pass --kts-image")
        if not (self.timeout_s > 0):
            raise ConfigError(
                f"timeout must be > 0 seconds, got {self.timeout_s}: fix --kts-timeout"
            )
        if not self.run_id or not re.search(r"[A-Za-z0-9]", self.run_id):
            raise ConfigError(f"run id {self.run_id!r} needs at least one letter or digit")
        if not self.worker_command:
            raise ConfigError("worker_command is empty")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(
                f"image_pull_policy {self.image_pull_policy!r} is not one of "
                "Always, IfNotPresent, Never"
            )
        if self.pending_grace_s < 0:
            raise ConfigError("pending_grace_s must be >= 0")


def cluster_settings(run: Any) -> ClusterSettings:
    """:class:`ClusterSettings` from the plugin's resolved settings (``--kts-*`` options).

    ``run`` is a ``pytest_kts.config.RunSettings`` or anything with its attribute names:
    namespace, image, node, runtime_class, timeout, keep_jobs, kubeconfig, context, and
    (optional) gpu_request with the options of its mode (dra_*, hami_*, kai_*).
    """

    def option(name: str) -> Any:
        return getattr(run, name, None)

    gpu = GpuRequest(
        mode=option("gpu_request") or "device-plugin",
        dra_device_class=option("dra_device_class") or "gpu.nvidia.com",
        dra_sharing=option("dra_sharing") or "default",
        dra_interval=option("dra_interval"),
        dra_mps_threads=option("dra_mps_threads"),
        dra_mps_memory=option("dra_mps_memory"),
        hami_cores=option("hami_cores"),
        hami_memory=option("hami_memory"),
        kai_fraction=option("kai_fraction"),
        kai_queue=option("kai_queue"),
    )
    return ClusterSettings(
        gpu=gpu,
        namespace=run.namespace,
        image=run.image,
        node=run.node or None,
        runtime_class=run.runtime_class or None,
        timeout_s=float(run.timeout),
        keep_jobs=bool(run.keep_jobs),
        kubeconfig=run.kubeconfig or None,
        context=run.context or None,
    )


# --------------------------------------------------------------------------- naming


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def dns_slug(text: str, max_len: int) -> str:
    """A DNS-1123 label part for ``text``; a hash keeps distinct texts distinct."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if slug == text and len(slug) <= max_len:
        return slug
    suffix = _short_hash(text)
    room = max_len - len(suffix) - 1
    head = slug[:room].strip("-")
    return f"{head}-{suffix}" if head else suffix


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a valid stand-in with a hash of it."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:52].strip("-_.")
    return f"{slug}-{_short_hash(text, 8)}" if slug else _short_hash(text, 8)


def claim_name(run_id: str, seq: int, phase: str) -> str:
    """``kts-<run>-<seq>-<phase>-gpu``: the ResourceClaim a phase's pods share (DRA)."""
    return f"kts-{dns_slug(run_id, 10)}-{seq:03d}-{phase}-gpu"


def job_name(run_id: str, seq: int, phase: str, tenant: str) -> str:
    """``kts-<run>-<seq>-<phase>-<tenant>``, at most 52 characters (pod names add 11)."""
    run = dns_slug(run_id, 10)
    head = f"kts-{run}-{seq:03d}-{phase}-"
    return head + dns_slug(tenant, 52 - len(head))
