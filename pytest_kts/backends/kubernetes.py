"""Kubernetes backend: every tenant of every phase runs as one Job on a (time-sliced) GPU.

What happens in a phase (``run_phase``):

1. One Job per tenant is created from :data:`JOB_TEMPLATE` (mirrored in
   ``manifests/job-template.yaml``); its container runs
   ``python -m workers.run <TenantSpec.worker_argv(device)> --phase P --round R --iterations N``.
2. A thread per tenant follows the pod's log (``follow=true&timestamps=true``, raw chunks split
   into lines here; the log endpoint answers 400 while the container is being created, so it
   retries; a dropped or idle stream is resumed and the kubelet timestamps drop what was seen).
3. The Jobs are awaited by a watch until their condition ``Complete`` or ``Failed`` is
   ``"True"``; a watch that ends in ``410 Gone`` is re-listed and resumed. Between watch
   segments the pods are checked: one that stays unschedulable or cannot pull its image ends
   the phase with a :class:`ClusterError` carrying the pod's events.

The shared phase must overlap for its whole measured window, but pods start when the scheduler
and kubelet get to them, and a Job has no stdin to release them together. So:

- a start barrier by the clock: every co-tenant gets the same ``--start-at-ns``, an instant
  far enough ahead to cover the pod start-up seen in this run's solo phases (x1.5 + 2 s;
  20 s before any was seen). Workers warm up, say ``ready``, then sleep until that instant;
- background load until the slowest finishes: every co-tenant gets ``--min-duration-s``, the
  longest time a co-tenant needed for its target in its solo phase, x2 for the slowdown (and
  at least 1 s + a quarter of the lead, for co-tenants that wake or start a little late);
- a check afterwards: only the window in which every tenant was measuring counts. Samples
  before the last tenant's first sample or after the first tenant's last sample are dropped
  (counted in :meth:`KubernetesBackend.facts`), and tenants that never overlapped raise
  :class:`ColocationError`.

Co-location on one GPU is checked, not assumed: every worker prints its GPU UUID (``KTS_META``)
and a shared phase whose tenants saw different UUIDs raises :class:`ColocationError`. The
device plugin's default ``distributed`` policy hands replicas out from the least-used GPU, so
two pods on one multi-GPU node land on different GPUs unless pinned to a single-GPU node.

Everything the backend creates carries ``app.kubernetes.io/managed-by=pytest-kts`` and
``kts.run-id``; Jobs are deleted at :meth:`KubernetesBackend.close` and on Ctrl-C (with
``propagationPolicy=Background`` so their pods go too) unless ``keep_jobs``.
``ttlSecondsAfterFinished`` and ``activeDeadlineSeconds`` clean up after a runner that died.

The ``kubernetes`` package is imported lazily: :class:`ClusterSettings` works without it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import re
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pytest_kts.backends.base import Backend, PhaseOutput, PhasePlan, TenantSpec
from pytest_kts.errors import ClusterError, ColocationError, ConfigError, WorkerError
from pytest_kts.protocol import Event, LineReader, Sample

log = logging.getLogger("pytest_kts.kubernetes")

MANAGED_BY = "pytest-kts"
CONTAINER = "worker"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN_ID = "kts.run-id"
LABEL_TENANT = "kts.tenant"
LABEL_PHASE = "kts.phase"
LABEL_ROUND = "kts.round"
LABEL_JOB = "kts.job"
ANNOTATION_TENANT = "kts.tenant"

# Request timeouts (seconds). Every call to the API server carries one.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 30.0
REACH_TIMEOUT_S = 5.0
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
_TIMESTAMP = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)

# The Job every tenant runs as. ``manifests/job-template.yaml`` mirrors it (a test keeps the two
# equal); :func:`render_job` fills in the names, labels, image, command and resources.
JOB_TEMPLATE: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {
        "name": "kts-worker",
        "namespace": "kts",
        "labels": {
            "app.kubernetes.io/name": "pytest-kts-worker",
            LABEL_MANAGED_BY: MANAGED_BY,
        },
    },
    "spec": {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "ttlSecondsAfterFinished": TTL_S,
        "activeDeadlineSeconds": 720,
        "template": {
            "metadata": {
                "labels": {
                    "app.kubernetes.io/name": "pytest-kts-worker",
                    LABEL_MANAGED_BY: MANAGED_BY,
                },
            },
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 5,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "runAsGroup": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": "pytest-kts-worker:latest",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-m", "workers.run"],
                        "args": [],
                        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                        # No CPU limit: CFS throttling would add its own tail latency.
                        "resources": {
                            "requests": {"cpu": "1", "memory": "2Gi"},
                            "limits": {"memory": "16Gi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        },
    },
}


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
    image: str = "pytest-kts-worker:latest"
    node: str | None = None
    runtime_class: str | None = "nvidia"
    timeout_s: float = 600.0
    keep_jobs: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    run_id: str = field(default_factory=_new_run_id)
    worker_command: tuple[str, ...] = ("python", "-m", "workers.run")
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


# --------------------------------------------------------------------------- connection


@dataclass
class ClusterClients:
    """The client objects of one connection; :func:`connect` makes them."""

    api_client: Any  # kubernetes.client.ApiClient
    core: Any  # kubernetes.client.CoreV1Api
    batch: Any  # kubernetes.client.BatchV1Api
    host: str
    source: str  # where the configuration came from, for messages

    def close(self) -> None:
        try:
            self.api_client.close()
        except Exception:  # closing must never mask the error being reported
            log.debug("closing the API client failed", exc_info=True)


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise ClusterError(
            "the 'kubernetes' package is not installed: pip install 'pytest-kts[kubernetes]'"
        ) from None
    return kubernetes


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def connect(settings: ClusterSettings, *, retries: int = 2) -> ClusterClients:
    """Client objects for the cluster: kubeconfig (``--kts-kubeconfig``, ``$KUBECONFIG``,
    ``~/.kube/config``, ``--kts-context``) or, inside a pod, the in-cluster service account.

    Nothing is sent to the cluster; see :func:`check_reachable`. Does not touch the
    ``kubernetes`` package's global default configuration.
    """
    k8s = _kubernetes()
    from kubernetes.config.config_exception import ConfigException

    cfg = k8s.client.Configuration()
    kubeconfig = settings.kubeconfig or os.environ.get("KUBECONFIG") or None
    default_path = os.path.expanduser("~/.kube/config")
    try:
        if kubeconfig or os.path.exists(default_path) or settings.context:
            path = kubeconfig or default_path
            paths = [p for p in path.split(os.pathsep) if p]
            if not any(os.path.exists(os.path.expanduser(p)) for p in paths):
                raise ClusterError(
                    f"no Kubernetes cluster reachable: kubeconfig {path} does not exist; "
                    "set KUBECONFIG or pass --kts-kubeconfig"
                )
            k8s.config.load_kube_config(
                config_file=path,
                context=settings.context,
                client_configuration=cfg,
                persist_config=False,
            )
            source = f"kubeconfig {path}" + (
                f" (context {settings.context})" if settings.context else ""
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s.config.load_incluster_config(client_configuration=cfg)
            source = "in-cluster service account"
        else:
            raise ClusterError(
                "no Kubernetes cluster reachable: no kubeconfig ($KUBECONFIG unset, "
                f"{default_path} missing) and not running in a pod; "
                "set KUBECONFIG or pass --kts-kubeconfig"
            )
    except ConfigException as exc:
        raise ClusterError(
            "no Kubernetes cluster reachable: the configuration cannot be used "
            f"({_one_line(exc)}); set KUBECONFIG or pass --kts-kubeconfig (and --kts-context)"
        ) from None
    cfg.retries = retries
    api_client = k8s.client.ApiClient(cfg)
    return ClusterClients(
        api_client=api_client,
        core=k8s.client.CoreV1Api(api_client),
        batch=k8s.client.BatchV1Api(api_client),
        host=str(cfg.host),
        source=source,
    )


def _connection_why(exc: BaseException) -> str:
    """The root of a urllib3 error in a few words ("Connection refused", "timed out")."""
    reason = getattr(exc, "reason", None) or exc
    text = _one_line(reason)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip().rstrip(".")
    if "timed out" in text.lower():
        return "connection timed out"
    return text[:160]


def check_reachable(settings: ClusterSettings) -> None:
    """Fail fast, with one line, when the cluster cannot be used.

    Asks for the server version, then lists Jobs in the namespace (which also checks the
    credentials and RBAC), each with a short timeout and no retries. Raises
    :class:`ClusterError` whose message is a single line to print without a traceback.
    """
    _kubernetes()
    import urllib3
    from kubernetes.client.exceptions import ApiException

    clients = connect(settings, retries=0)
    timeout = (REACH_TIMEOUT_S, REACH_TIMEOUT_S)
    host = clients.host
    try:
        from kubernetes.client import VersionApi

        VersionApi(clients.api_client).get_code(_request_timeout=timeout)
        clients.batch.list_namespaced_job(settings.namespace, limit=1, _request_timeout=timeout)
    except ApiException as exc:
        raise ClusterError(_api_error_line(exc, host, settings, "list Jobs")) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ClusterError(
            f"no Kubernetes cluster reachable at {host} ({clients.source}): "
            f"{_connection_why(exc)}; set KUBECONFIG or pass --kts-kubeconfig"
        ) from None
    finally:
        clients.close()


def _api_error_line(exc: Any, host: str, settings: ClusterSettings, doing: str) -> str:
    status = getattr(exc, "status", None)
    reason = _one_line(getattr(exc, "reason", "") or "")
    message = _status_message(exc)
    if status == 401:
        return (
            f"the cluster at {host} rejected the credentials (401 Unauthorized); "
            "refresh the kubeconfig (expired token or certificate?)"
        )
    if status == 403:
        return (
            f"not allowed to {doing} in namespace {settings.namespace!r} at {host} "
            f"(403 Forbidden: {message or reason}); apply manifests/rbac.yaml and use its "
            "ServiceAccount, or a context that may"
        )
    if status == 404 and "namespace" in message.lower():
        return (
            f"namespace {settings.namespace!r} does not exist at {host}; "
            "kubectl apply -f manifests/namespace.yaml, or pass --kts-namespace"
        )
    if status == 0:
        return (
            f"no Kubernetes cluster reachable at {host}: {reason}; check the kubeconfig's TLS data"
        )
    return f"the cluster at {host} answered {status} {reason} while trying to {doing}: {message}"


def _status_message(exc: Any) -> str:
    """The ``message`` of a Kubernetes Status body, or the raw body in a few words."""
    body = getattr(exc, "body", None)
    if not body:
        return ""
    try:
        import json

        data = json.loads(body)
        if isinstance(data, dict) and data.get("message"):
            return _one_line(data["message"])[:400]
    except (ValueError, TypeError):
        pass
    return _one_line(body)[:200]


def cluster_settings(run: Any) -> ClusterSettings:
    """:class:`ClusterSettings` from the plugin's resolved settings (``--kts-*`` options).

    ``run`` is a ``pytest_kts.config.RunSettings`` or anything with its attribute names:
    namespace, image, node, runtime_class, timeout, keep_jobs, kubeconfig, context.
    """
    return ClusterSettings(
        namespace=run.namespace,
        image=run.image,
        node=run.node or None,
        runtime_class=run.runtime_class or None,
        timeout_s=float(run.timeout),
        keep_jobs=bool(run.keep_jobs),
        kubeconfig=run.kubeconfig or None,
        context=run.context or None,
    )


def make_cluster_backend(run: Any) -> KubernetesBackend:
    """The backend for a ``--kts-cluster`` run (see :func:`cluster_settings`)."""
    return KubernetesBackend(cluster_settings(run))


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


def job_name(run_id: str, seq: int, phase: str, tenant: str) -> str:
    """``kts-<run>-<seq>-<phase>-<tenant>``, at most 52 characters (pod names add 11)."""
    run = dns_slug(run_id, 10)
    head = f"kts-{run}-{seq:03d}-{phase}-"
    return head + dns_slug(tenant, 52 - len(head))


# --------------------------------------------------------------------------- the Job


def render_job(
    settings: ClusterSettings,
    spec: TenantSpec,
    *,
    device: str,
    name: str,
    phase: str,
    round: int,
    iterations: int,
    start_at_ns: int | None = None,
    min_duration_s: float | None = None,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """The Job manifest of one tenant in one phase, from :data:`JOB_TEMPLATE`."""
    job = copy.deepcopy(JOB_TEMPLATE)
    labels = {
        **job["metadata"]["labels"],
        LABEL_RUN_ID: label_value(settings.run_id),
        LABEL_TENANT: label_value(spec.name),
        LABEL_PHASE: phase,
        LABEL_ROUND: str(round),
        LABEL_JOB: name,
    }
    job["metadata"].update(
        name=name,
        namespace=settings.namespace,
        labels=dict(labels),
        annotations={ANNOTATION_TENANT: spec.name},
    )
    jspec = job["spec"]
    jspec["ttlSecondsAfterFinished"] = TTL_KEPT_S if settings.keep_jobs else TTL_S
    timeout = deadline_s if deadline_s is not None else settings.timeout_s
    jspec["activeDeadlineSeconds"] = math.ceil(timeout) + DEADLINE_SLACK_S
    template = jspec["template"]
    template["metadata"]["labels"] = dict(labels)
    template["metadata"]["annotations"] = {ANNOTATION_TENANT: spec.name}
    pod = template["spec"]
    container = pod["containers"][0]
    container["image"] = settings.image
    container["imagePullPolicy"] = settings.image_pull_policy
    container["command"] = list(settings.worker_command)
    args = [
        *spec.worker_argv(device),
        "--phase", phase, "--round", str(round), "--iterations", str(iterations),
    ]  # fmt: skip
    if start_at_ns is not None:
        args += ["--start-at-ns", str(int(start_at_ns))]
    if min_duration_s:
        args += ["--min-duration-s", f"{min_duration_s:.3f}"]
    container["args"] = args
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update({"KTS_RUN_ID": settings.run_id, **{str(k): str(v) for k, v in spec.env.items()}})
    container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    requests: dict[str, str] = {"cpu": settings.cpu_request, "memory": settings.memory_request}
    limits: dict[str, str] = {}
    if settings.memory_limit:
        limits["memory"] = settings.memory_limit
    if device != "cpu":
        # Extended resources: request == limit. One replica of a time-sliced GPU.
        requests[settings.gpu_resource] = "1"
        limits[settings.gpu_resource] = "1"
        if settings.runtime_class:
            pod["runtimeClassName"] = settings.runtime_class
        pod["tolerations"] = [
            {"key": settings.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        ]
    container["resources"] = {"requests": requests, **({"limits": limits} if limits else {})}
    if settings.node:
        pod["nodeSelector"] = {"kubernetes.io/hostname": settings.node}
    return job


# --------------------------------------------------------------------------- per-tenant state


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


@dataclass
class _TenantRun:
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


# --------------------------------------------------------------------------- the backend


class KubernetesBackend(Backend):
    """Runs each tenant of each phase as a Kubernetes Job and collects its log."""

    name = "kubernetes"

    def __init__(self, settings: ClusterSettings, *, clients: ClusterClients | None = None) -> None:
        self.settings = settings
        self._clients = clients
        self._own_clients = clients is None
        self._tenants: dict[str, TenantSpec] = {}
        self._device = "auto"
        self._seq = 0
        self._jobs: list[str] = []  # every Job this backend asked for, in order
        self._deleted: set[str] = set()
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
        names = [t.name for t in tenants]
        if len(set(names)) != len(names):
            raise ConfigError(f"tenant names must be unique, got {names}")
        if device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"device must be auto, cuda or cpu, got {device!r}")
        self._tenants = {t.name: t for t in tenants}
        self._device = device
        if self._clients is None:
            self._clients = connect(self.settings)

    def run_phase(self, plan: PhasePlan, timeout_s: float) -> PhaseOutput:
        if self._closed:
            raise ClusterError("the Kubernetes backend is closed; start a new one")
        if self._clients is None:
            raise ClusterError("run_phase before start(): call start(tenants, device) first")
        unknown = [t for t in plan.tenants if t not in self._tenants]
        if unknown:
            raise ConfigError(f"phase names tenants that were never started: {unknown}")
        if plan.phase not in ("solo", "shared"):
            raise ConfigError(f"phase must be solo or shared, got {plan.phase!r}")
        timeout = float(timeout_s) if timeout_s and timeout_s > 0 else self.settings.timeout_s
        self._seq += 1
        started_ns = time.time_ns()
        deadline = time.monotonic() + timeout
        start_at_ns: int | None = None
        min_duration: float | None = None
        if plan.phase == "shared":
            lead = self._start_lead_s(plan.tenants)
            start_at_ns = started_ns + int(lead * 1e9)
            min_duration = self._min_duration_s(plan, lead)
            deadline += lead
        runs: dict[str, _TenantRun] = {}
        try:
            for tenant in plan.tenants:
                name = job_name(self.settings.run_id, self._seq, plan.phase, tenant)
                manifest = render_job(
                    self.settings,
                    self._tenants[tenant],
                    device=self._device,
                    name=name,
                    phase=plan.phase,
                    round=plan.round,
                    iterations=int(plan.iterations[tenant]),
                    start_at_ns=start_at_ns,
                    min_duration_s=min_duration,
                    deadline_s=deadline - time.monotonic(),
                )
                runs[tenant] = self._create(manifest, tenant)
            selector = self._selector(plan)
            for run in runs.values():
                run.thread = threading.Thread(
                    target=self._follow_log,
                    args=(run, deadline),
                    daemon=True,
                    name=f"kts-log-{run.job}",
                )
                run.thread.start()
            self._await_jobs(runs, selector, deadline, timeout)
            self._refresh_pods(runs, selector)
            self._drain(runs, plan)
        except KeyboardInterrupt:
            self._abort(runs)
            if not self.settings.keep_jobs:
                self._delete_jobs()
            raise
        finally:
            self._abort(runs)
        ended_ns = time.time_ns()
        record = self._record(plan, runs, start_at_ns)
        if plan.phase == "shared":
            self._check_colocation(plan, runs, record)
            self._trim_to_overlap(plan, runs, record)
        else:
            self._learn_from_solo(runs)
        return PhaseOutput(
            plan=plan,
            readers={t: runs[t].reader for t in plan.tenants},
            started_ns=started_ns,
            ended_ns=ended_ns,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.settings.keep_jobs:
                self._delete_jobs()
        finally:
            if self._clients is not None and self._own_clients:
                self._clients.close()

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
            "node_pinned": self.settings.node,
            "nodes": sorted(nodes),
            "tenants": copy.deepcopy(self._metas),
            "pods": pods,
            "gpu_uuids": uuids,
            "gpu_uuids_by_tenant": by_tenant,
            "phases": copy.deepcopy(self._phases),
            "watch_relists_after_410": self._relists,
            "notes": list(self._notes),
        }

    def check_colocated(self) -> None:
        """Raise :class:`ColocationError` if a shared phase so far saw two GPUs.

        ``run_phase`` already checks every shared phase; this answers the runner's question
        after a round the same way the local backend does.
        """
        for phase in self._phases:
            if phase["phase"] != "shared":
                continue
            seen = {t: i.get("gpu_uuid") for t, i in phase["tenants"].items()}
            if len({u for u in seen.values() if u}) > 1:
                raise ColocationError(
                    f"shared phase (round {phase['round']}) ran on different GPUs: {seen}; pin "
                    "the pods to one single-GPU node with --kts-node"
                )

    # -- Jobs ----------------------------------------------------------------------------

    def _api(self, call: Any, *args: Any, doing: str, **kwargs: Any) -> Any:
        """One API call with a timeout; errors become :class:`ClusterError`."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        assert self._clients is not None
        kwargs.setdefault("_request_timeout", (CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S))
        try:
            return call(*args, **kwargs)
        except ApiException as exc:
            raise ClusterError(
                _api_error_line(exc, self._clients.host, self.settings, doing)
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(
                f"lost contact with the cluster at {self._clients.host} while trying to {doing}: "
                f"{_connection_why(exc)}; check the cluster and retry"
            ) from None

    def _create(self, manifest: dict[str, Any], tenant: str) -> _TenantRun:
        assert self._clients is not None
        name = manifest["metadata"]["name"]
        # Remembered before the call: a Ctrl-C during it must still clean up.
        self._jobs.append(name)
        run = _TenantRun(tenant=tenant, job=name, created_ns=time.time_ns())
        self._api(
            self._clients.batch.create_namespaced_job,
            self.settings.namespace,
            manifest,
            doing=f"create Job {name}",
        )
        log.debug("created Job %s for tenant %s", name, tenant)
        return run

    def _selector(self, plan: PhasePlan) -> str:
        return ",".join(
            [
                f"{LABEL_MANAGED_BY}={MANAGED_BY}",
                f"{LABEL_RUN_ID}={label_value(self.settings.run_id)}",
                f"{LABEL_PHASE}={plan.phase}",
                f"{LABEL_ROUND}={plan.round}",
            ]
        )

    def _delete_jobs(self) -> None:
        from kubernetes.client.exceptions import ApiException

        if self._clients is None:
            return
        failed: list[str] = []
        for name in self._jobs:
            if name in self._deleted:
                continue
            try:
                self._clients.batch.delete_namespaced_job(
                    name,
                    self.settings.namespace,
                    propagation_policy="Background",
                    _request_timeout=(CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S),
                )
                self._deleted.add(name)
            except ApiException as exc:
                if exc.status == 404:
                    self._deleted.add(name)
                else:
                    failed.append(f"{name} ({exc.status} {_one_line(exc.reason)})")
            except Exception as exc:  # unreachable cluster: report, never mask the real error
                failed.append(f"{name} ({_connection_why(exc)})")
        if failed:
            warnings.warn(
                f"pytest-kts could not delete {len(failed)} Job(s): {', '.join(failed)}; delete "
                f"them with: kubectl delete jobs -n {self.settings.namespace} "
                f"-l {LABEL_RUN_ID}={label_value(self.settings.run_id)}",
                RuntimeWarning,
                stacklevel=2,
            )

    # -- waiting ---------------------------------------------------------------------------

    def _await_jobs(
        self, runs: dict[str, _TenantRun], selector: str, deadline: float, timeout: float
    ) -> None:
        """Watch the phase's Jobs until each has condition Complete or Failed "True"."""
        import urllib3
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        assert self._clients is not None
        batch = self._clients.batch
        by_job = {run.job: run for run in runs.values()}
        resource_version: str | None = None
        watcher = watch.Watch()
        while True:
            if resource_version is None:
                listing = self._api(
                    batch.list_namespaced_job,
                    self.settings.namespace,
                    label_selector=selector,
                    doing="list Jobs",
                )
                for job in listing.items or []:
                    self._update_job(by_job, job)
                resource_version = listing.metadata.resource_version
            if all(run.finished for run in runs.values()):
                return
            self._check_pods(runs, selector)
            for run in runs.values():
                if run.error is not None:
                    raise ClusterError(
                        f"tenant {run.tenant!r}: reading the log of pod {run.pod} failed: "
                        f"{_one_line(run.error)}"
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._raise_timeout(runs, timeout)
            settled = all(run.running or run.finished for run in runs.values())
            longest = WATCH_SEGMENT_S if settled else WATCH_SEGMENT_PENDING_S
            segment = max(1, min(longest, math.ceil(remaining)))
            try:
                for event in watcher.stream(
                    batch.list_namespaced_job,
                    self.settings.namespace,
                    label_selector=selector,
                    resource_version=resource_version,
                    timeout_seconds=segment,
                    _request_timeout=(CONNECT_TIMEOUT_S, segment + REQUEST_TIMEOUT_S),
                ):
                    obj = event.get("object")
                    if event.get("type") == "BOOKMARK":
                        resource_version = watcher.resource_version or resource_version
                        continue
                    meta = getattr(obj, "metadata", None)
                    if meta is not None and meta.resource_version:
                        resource_version = meta.resource_version
                    if event.get("type") == "DELETED" and meta is not None and meta.name in by_job:
                        run = by_job[meta.name]
                        if not run.finished:
                            raise ClusterError(
                                f"tenant {run.tenant!r}: Job {run.job} was deleted by someone "
                                "else before it finished; is another pytest-kts run sharing "
                                f"namespace {self.settings.namespace!r}?"
                            )
                        continue
                    self._update_job(by_job, obj)
                    if all(run.finished for run in runs.values()):
                        watcher.stop()
                        break
            except ApiException as exc:
                if exc.status == 410:
                    # The resourceVersion is too old (compacted): list again and resume.
                    log.debug("job watch expired (410 Gone); re-listing")
                    self._relists += 1
                    resource_version = None
                    continue
                raise ClusterError(
                    _api_error_line(exc, self._clients.host, self.settings, "watch Jobs")
                ) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                # A watch that went silent or dropped: resume from the last resourceVersion.
                log.debug("job watch ended (%s); resuming", _connection_why(exc))
                time.sleep(0.2)

    def _update_job(self, by_job: dict[str, _TenantRun], job: Any) -> None:
        meta = getattr(job, "metadata", None)
        run = by_job.get(getattr(meta, "name", None) or "")
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

    def _refresh_pods(self, runs: dict[str, _TenantRun], selector: str) -> list[Any]:
        """List the phase's pods; learn each tenant's pod name and node."""
        assert self._clients is not None
        pods = (
            self._api(
                self._clients.core.list_namespaced_pod,
                self.settings.namespace,
                label_selector=selector,
                doing="list pods",
            ).items
            or []
        )
        by_job = {run.job: run for run in runs.values()}
        found = []
        for pod in pods:
            run = by_job.get((pod.metadata.labels or {}).get(LABEL_JOB, ""))
            if run is None:
                continue
            run.pod = pod.metadata.name
            run.node = getattr(pod.spec, "node_name", None) or run.node
            run.running = (getattr(pod.status, "phase", None) or "Pending") != "Pending"
            run.pod_known.set()
            found.append((run, pod))
        return found

    def _check_pods(self, runs: dict[str, _TenantRun], selector: str) -> None:
        """Fail a pod that will not start on its own, or a Job that makes no pod."""
        seen: set[str] = set()
        now = time.monotonic()
        for run, pod in self._refresh_pods(runs, selector):
            seen.add(run.job)
            stuck = None if run.finished else _stuck_reason(pod)
            if stuck is None:
                run.stuck_since = None
                continue
            if run.stuck_since is None:
                run.stuck_since = now
            if now - run.stuck_since >= self.settings.pending_grace_s:
                self._raise_stuck(run, *stuck)
        for run in runs.values():
            if run.job in seen or run.finished:
                run.no_pod_since = None
                continue
            if run.no_pod_since is None:
                run.no_pod_since = now
            elif now - run.no_pod_since >= self.settings.pending_grace_s:
                events = self._events(run.job)
                raise ClusterError(
                    f"tenant {run.tenant!r}: Job {run.job} made no pod in "
                    f"{now - run.no_pod_since:.0f} s (quota, admission or a missing "
                    f"ServiceAccount?); events of the Job:\n{events}"
                )

    def _raise_stuck(self, run: _TenantRun, kind: str, reason: str, message: str) -> None:
        events = self._events(run.pod or "")
        where = f"pod {run.pod}" + (f" on node {run.node}" if run.node else "")
        if kind == "unschedulable":
            hint = (
                "no node can take it: check that a node offers "
                f"{self.settings.gpu_resource} (time-slicing replicas, the device plugin's "
                "config), that --kts-node names a real node, and that enough replicas are free"
            )
        elif kind == "image":
            hint = (
                f"the worker image {self.settings.image!r} cannot be pulled: build it "
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

    def _raise_timeout(self, runs: dict[str, _TenantRun], timeout: float) -> None:
        pending = [run for run in runs.values() if not run.finished]
        run = pending[0]
        events = self._events(run.pod or run.job)
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

    def _events(self, name: str) -> str:
        """The object's events, oldest first, one per line (best effort)."""
        if not name or self._clients is None:
            return "  (none)"
        try:
            events = (
                self._clients.core.list_namespaced_event(
                    self.settings.namespace,
                    field_selector=f"involvedObject.name={name}",
                    _request_timeout=(CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S),
                ).items
                or []
            )
        except Exception as exc:  # the error being reported matters more than its events
            return f"  (events unavailable: {_one_line(exc)[:160]})"

        def when(event: Any) -> str:
            stamp = event.last_timestamp or event.event_time or event.first_timestamp
            return stamp.isoformat() if stamp is not None else ""

        lines = []
        for event in sorted(events, key=when)[-EVENTS_SHOWN:]:
            source = getattr(event.source, "component", None) or event.reporting_component or "?"
            count = f" (x{event.count})" if event.count and event.count > 1 else ""
            lines.append(
                f"  {event.type or '?'} {event.reason or '?'} ({source}){count}: "
                f"{_one_line(event.message or '')}"
            )
        return "\n".join(lines) or "  (none)"

    # -- logs ----------------------------------------------------------------------------

    def _follow_log(self, run: _TenantRun, deadline: float) -> None:
        """Thread: follow the pod's log into the tenant's LineReader until the container ends."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        assert self._clients is not None
        core = self._clients.core
        delay = 0.1
        try:
            while not run.pod_known.is_set():
                # The main thread learns pods between watch segments; do not wait for it.
                if run.stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    pods = core.list_namespaced_pod(
                        self.settings.namespace,
                        label_selector=f"{LABEL_JOB}={run.job}",
                        _request_timeout=(CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S),
                    ).items
                except ApiException as exc:
                    if exc.status in (401, 403):
                        raise
                    pods = []  # a hiccup of the API server: try again
                except (urllib3.exceptions.HTTPError, OSError):
                    pods = []
                if pods:
                    run.pod = pods[0].metadata.name
                    run.pod_known.set()
                else:
                    run.stop.wait(delay)
                    delay = min(delay * 2, LOG_RETRY_MAX_S)
            delay = 0.1
            while not run.stop.is_set() and time.monotonic() < deadline + LOG_DRAIN_S:
                try:
                    response = core.read_namespaced_pod_log(
                        run.pod,
                        self.settings.namespace,
                        container=CONTAINER,
                        follow=True,
                        timestamps=True,
                        _preload_content=False,
                        _request_timeout=(CONNECT_TIMEOUT_S, LOG_IDLE_TIMEOUT_S),
                    )
                except ApiException as exc:
                    if exc.status in (400, 404):
                        # 400: the container is still being created (or cannot start: the
                        # main thread reports that). 404: the pod is not visible yet or gone.
                        run.log_waits += 1
                        if run.finished and exc.status == 404:
                            return
                        run.stop.wait(delay)
                        delay = min(delay * 2, LOG_RETRY_MAX_S)
                        continue
                    raise
                except (urllib3.exceptions.HTTPError, OSError):
                    run.stop.wait(delay)
                    delay = min(delay * 2, LOG_RETRY_MAX_S)
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
                            skip_at_last = self._take(run, raw, skip_at_last)
                    run.partial = buffer
                except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError):
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
                if ended and self._container_ended(run):
                    if run.partial:
                        self._take(run, run.partial, skip_at_last)
                        run.partial = b""
                    return
        except BaseException as exc:  # reported by the main thread
            run.error = exc
        finally:
            run.done.set()

    def _take(self, run: _TenantRun, raw: bytes, skip_at_last: int) -> int:
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

    def _container_ended(self, run: _TenantRun) -> bool:
        """Whether the log ended because the container did (not because a stream dropped)."""
        from kubernetes.client.exceptions import ApiException

        assert self._clients is not None
        try:
            pod = self._clients.core.read_namespaced_pod(
                run.pod,
                self.settings.namespace,
                _request_timeout=(CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S),
            )
        except ApiException as exc:
            return exc.status == 404
        if (pod.status.phase or "") in ("Succeeded", "Failed"):
            return True
        for status in pod.status.container_statuses or []:
            if status.name == CONTAINER and status.state is not None and status.state.terminated:
                return True
        return False

    def _drain(self, runs: dict[str, _TenantRun], plan: PhasePlan) -> None:
        """After the Jobs ended: wait for the log streams, then turn failures into errors."""
        now = time.monotonic()
        for run in runs.values():
            # A failed pod may never have had a log; its stream is not worth a long wait.
            until = now + (LOG_DRAIN_S if run.job_state == "complete" else 5.0)
            if run.thread is not None:
                run.thread.join(max(0.0, until - time.monotonic()))
        for run in runs.values():
            if run.job_state == "failed":
                self._raise_failed(run)
        for run in runs.values():
            if run.error is not None:
                raise ClusterError(
                    f"tenant {run.tenant!r}: reading the log of pod {run.pod} failed: "
                    f"{_one_line(run.error)}"
                )
            if run.thread is not None and run.thread.is_alive():
                raise ClusterError(
                    f"tenant {run.tenant!r}: Job {run.job} completed but its log stream did not "
                    f"end within {LOG_DRAIN_S:.0f} s; the API server or kubelet is slow"
                )
            if not run.reader.samples:
                raise WorkerError(
                    run.tenant,
                    f"Job {run.job} completed but its log has no KTS_APP sample lines "
                    f"({run.reader.lines} lines, {run.reader.foreign} foreign, "
                    f"{run.reader.malformed} malformed); is the image's worker this version?",
                    "\n".join(run.tail),
                )

    def _raise_failed(self, run: _TenantRun) -> None:
        from kubernetes.client.exceptions import ApiException

        assert self._clients is not None
        state = None
        if run.pod:
            try:
                pod = self._clients.core.read_namespaced_pod(
                    run.pod,
                    self.settings.namespace,
                    _request_timeout=(CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S),
                )
                for status in pod.status.container_statuses or []:
                    if status.name == CONTAINER and status.state is not None:
                        state = status.state.terminated
            except ApiException:
                state = None
        exit_code = getattr(state, "exit_code", None)
        reason = getattr(state, "reason", None) or ""
        oom = reason == "OOMKilled" or exit_code == 3
        what = f"Job {run.job} failed ({run.job_reason or 'Failed'}: {run.job_message or '-'})"
        if state is not None:
            what += f"; container {CONTAINER!r} exited with code {exit_code} ({reason or '-'})"
        if reason == "OOMKilled":
            what += (
                f"; it went over its memory limit ({self.settings.memory_limit}): lower the "
                "tenant's size or raise the memory limit"
            )
        elif exit_code == 3:
            what += "; CUDA ran out of memory: lower the tenant's size or run fewer co-tenants"
        elif exit_code == 4:
            what += (
                "; the pod saw no GPU: check the RuntimeClass (--kts-runtime-class) and that "
                f"the node's device plugin offers {self.settings.gpu_resource}"
            )
        elif exit_code == 2:
            what += "; the worker rejected its arguments: is the image the same version?"
        elif run.job_reason == "DeadlineExceeded":
            what += "; it ran past activeDeadlineSeconds: raise --kts-timeout"
        events = self._events(run.pod or "") if run.pod else "  (no pod)"
        job_events = self._events(run.job)
        raise WorkerError(
            run.tenant,
            f"{what}.\nEvents of pod {run.pod}:\n{events}\nEvents of Job {run.job}:\n{job_events}",
            "\n".join(run.tail),
            oom=oom,
        )

    def _abort(self, runs: dict[str, _TenantRun]) -> None:
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
                run.thread.join(CONNECT_TIMEOUT_S + 1)

    # -- shared-phase coordination ----------------------------------------------------------

    def _start_lead_s(self, tenants: Sequence[str]) -> float:
        seen = [self._startup_s[t] for t in tenants if t in self._startup_s]
        if not seen:
            return START_LEAD_DEFAULT_S
        lead = max(seen) * START_LEAD_FACTOR + START_LEAD_MARGIN_S
        return min(max(lead, START_LEAD_MARGIN_S), START_LEAD_MAX_S)

    def _min_duration_s(self, plan: PhasePlan, lead_s: float) -> float:
        """How long every co-tenant keeps running: the slowest solo target, with margins."""
        estimates = [
            self._solo_period_s[t] * int(plan.iterations[t])
            for t in plan.tenants
            if t in self._solo_period_s
        ]
        slowest = max(estimates, default=0.0) * SHARED_SLOWDOWN_MARGIN
        return max(slowest, SHARED_MIN_WINDOW_S + SHARED_LATE_SHARE * lead_s)

    def _learn_from_solo(self, runs: dict[str, _TenantRun]) -> None:
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
        self, plan: PhasePlan, runs: dict[str, _TenantRun], start_at_ns: int | None
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
        self, plan: PhasePlan, runs: dict[str, _TenantRun], record: dict[str, Any]
    ) -> None:
        uuids = {t: runs[t].gpu_uuid for t in plan.tenants}
        known = {t: u for t, u in uuids.items() if u}
        nodes = {t: runs[t].node for t in plan.tenants}

        def where(t: str) -> str:
            return f"{t} on {uuids[t] or 'no GPU'} (node {nodes[t] or '?'}, pod {runs[t].pod})"

        if len(set(known.values())) > 1:
            record["colocation"] = "failed: different GPUs"
            raise ColocationError(
                f"shared phase (round {plan.round}) ran on different GPUs: "
                + "; ".join(where(t) for t in plan.tenants)
                + ". Tenants on different GPUs do not contend, so this is no co-location "
                "measurement. Pin the pods to one single-GPU node with --kts-node NODE (the "
                "device plugin's default 'distributed' policy spreads time-sliced replicas over "
                "a node's GPUs), or give the node one shared GPU (see docs/kubernetes.md)."
            )
        if not known:
            note = (
                f"round {plan.round}: co-location on one GPU not checked: no tenant reported a "
                "GPU UUID (CPU run)"
            )
            if len(set(nodes.values())) > 1:
                note += f"; the pods ran on different nodes: {nodes}"
            record["colocation"] = "not checked: no GPU UUID (CPU)"
            self._notes.append(note)
            return
        missing = sorted(set(uuids) - set(known))
        if missing:
            record["colocation"] = f"partial: no GPU UUID from {missing}"
            self._notes.append(
                f"round {plan.round}: co-location only partly checked: {missing} reported no "
                "GPU UUID"
            )
            return
        uuid_ = next(iter(known.values()))
        record["colocation"] = f"verified: all tenants on {uuid_}"
        moved = {
            t: self._solo_uuid[t] for t in plan.tenants if self._solo_uuid.get(t, uuid_) != uuid_
        }
        if moved:
            self._notes.append(
                f"round {plan.round}: the shared phase ran on {uuid_} but solo phases ran on "
                f"{moved}: solo and shared were measured on different GPUs"
            )

    def _trim_to_overlap(
        self, plan: PhasePlan, runs: dict[str, _TenantRun], record: dict[str, Any]
    ) -> None:
        """Keep only the window in which every tenant was measuring."""
        spans = {}
        for tenant in plan.tenants:
            samples = [s for s in runs[tenant].reader.samples if s.phase == "shared"]
            if samples:
                spans[tenant] = (min(s.start_ns for s in samples), max(s.end_ns for s in samples))
        if len(spans) < 2:
            return
        begin = max(b for b, _ in spans.values())
        end = min(e for _, e in spans.values())
        if begin >= end:
            raise ColocationError(
                f"shared phase (round {plan.round}): the tenants never measured at the same "
                "time: "
                + "; ".join(
                    f"{t} {(b - begin) / 1e9:+.2f} s .. {(e - begin) / 1e9:+.2f} s"
                    for t, (b, e) in spans.items()
                )
                + " (relative to the last start); their pods started too far apart. Pods that "
                "wait for an image or a free GPU replica do this: pre-pull the image and check "
                "the node's replicas."
            )
        record["overlap_s"] = round((end - begin) / 1e9, 3)
        for tenant in plan.tenants:
            reader = runs[tenant].reader
            kept = [s for s in reader.samples if s.start_ns >= begin and s.end_ns <= end]
            dropped = len(reader.samples) - len(kept)
            reader.samples[:] = kept
            record["tenants"][tenant]["samples"] = len(kept)
            record["tenants"][tenant]["dropped_outside_overlap"] = dropped


def _stuck_reason(pod: Any) -> tuple[str, str, str] | None:
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
        if waiting is not None and waiting.reason in STUCK_WAITING:
            return STUCK_WAITING[waiting.reason], waiting.reason, waiting.message or ""
    return None


__all__ = [
    "JOB_TEMPLATE",
    "ClusterClients",
    "ClusterSettings",
    "KubernetesBackend",
    "check_reachable",
    "cluster_settings",
    "connect",
    "make_cluster_backend",
    "render_job",
]
