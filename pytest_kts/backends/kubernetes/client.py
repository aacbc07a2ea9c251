"""The connection to the API server, and every call made through it.

:func:`connect` builds the client objects from a kubeconfig or the in-cluster service
account; :func:`check_reachable` fails fast with one line; :class:`Client` is the one object
every other module calls the API through (timeouts, error text). The ``kubernetes`` package
is imported here, lazily, and nowhere else.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.backends.kubernetes.errors import ApiError, ApiUnreachable, error_class
from pytest_kts.backends.kubernetes.settings import ClusterSettings
from pytest_kts.errors import ClusterError

log = logging.getLogger("pytest_kts.kubernetes")


@dataclass
class ClusterClients:
    """The client objects of one connection; :func:`connect` makes them."""

    api_client: Any  # kubernetes.client.ApiClient
    core: Any  # kubernetes.client.CoreV1Api
    batch: Any  # kubernetes.client.BatchV1Api
    host: str
    source: str  # where the configuration came from, for messages
    # kubernetes.client.CustomObjectsApi: resource.k8s.io claims by group/version/plural, so
    # DRA needs no client version that knows the resource API.
    custom: Any = None

    def close(self) -> None:
        try:
            self.api_client.close()
        except Exception:  # closing must never mask the error being reported
            log.debug("closing the API client failed", exc_info=True)


@functools.cache
def api() -> SimpleNamespace:
    """The ``kubernetes`` client's names the backend uses, imported here once, lazily
    (:class:`ClusterSettings` and the manifest work without the package)."""
    try:
        import kubernetes
        import urllib3
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise ClusterError(
            "the 'kubernetes' package is not installed: pip install 'pytest-kts[kubernetes]'"
        ) from None
    return SimpleNamespace(
        k8s=kubernetes,
        ApiException=ApiException,
        ConfigException=ConfigException,
        Watch=watch.Watch,
        # The request did not get an answer: refused, reset, timed out.
        transport_errors=(urllib3.exceptions.HTTPError, OSError),
    )


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def connect(settings: ClusterSettings, *, retries: int = 0) -> ClusterClients:
    """Client objects for the cluster: kubeconfig (``--kts-kubeconfig``, ``$KUBECONFIG``,
    ``~/.kube/config``, ``--kts-context``) or, inside a pod, the in-cluster service account.

    Nothing is sent to the cluster; see :func:`check_reachable`. Does not touch the
    ``kubernetes`` package's global default configuration.
    """
    k8s = api().k8s
    ConfigException = api().ConfigException

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
            f"({one_line(exc)}); set KUBECONFIG or pass --kts-kubeconfig (and --kts-context)"
        ) from None
    cfg.retries = retries
    api_client = k8s.client.ApiClient(cfg)
    return ClusterClients(
        api_client=api_client,
        core=k8s.client.CoreV1Api(api_client),
        batch=k8s.client.BatchV1Api(api_client),
        host=str(cfg.host),
        source=source,
        custom=k8s.client.CustomObjectsApi(api_client),
    )


def connection_why(exc: BaseException) -> str:
    """The root of a urllib3 error in a few words ("Connection refused", "timed out")."""
    reason = getattr(exc, "reason", None) or exc
    text = one_line(reason)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip().rstrip(".")
    if "timed out" in text.lower():
        # A read timeout: connected, but no answer (a frozen server); else no connection.
        read = "read" in text.lower() or type(exc).__name__ == "ReadTimeoutError"
        return "no answer (read timed out)" if read else "connection timed out"
    return text[:160]


def check_reachable(settings: ClusterSettings) -> None:
    """Fail fast, with one line, when the cluster cannot be used.

    Asks for the server version, then lists Jobs in the namespace (which also checks the
    credentials and RBAC), each with a short timeout and no retries. Raises
    :class:`ClusterError` whose message is a single line to print without a traceback.
    """
    names = api()
    clients = connect(settings, retries=0)
    timeout = (knobs.REACH_TIMEOUT_S, knobs.REACH_TIMEOUT_S)
    host = clients.host
    try:
        names.k8s.client.VersionApi(clients.api_client).get_code(_request_timeout=timeout)
        clients.batch.list_namespaced_job(settings.namespace, limit=1, _request_timeout=timeout)
    except names.ApiException as exc:
        raise typed_error(exc, host, settings, "list Jobs") from None
    except names.transport_errors as exc:
        raise ClusterError(
            f"no Kubernetes cluster reachable at {host} ({clients.source}): "
            f"{connection_why(exc)}; set KUBECONFIG or pass --kts-kubeconfig"
        ) from None
    finally:
        clients.close()


def api_error_line(exc: Any, host: str, settings: ClusterSettings, doing: str) -> str:
    status = getattr(exc, "status", None)
    reason = one_line(getattr(exc, "reason", "") or "")
    message = status_message(exc)
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
    if status == 404 and namespace_missing(message):
        return (
            f"namespace {settings.namespace!r} does not exist at {host}; "
            "kubectl apply -f manifests/namespace.yaml, or pass --kts-namespace"
        )
    if status == 0:
        return (
            f"no Kubernetes cluster reachable at {host}: {reason}; check the kubeconfig's TLS data"
        )
    return f"the cluster at {host} answered {status} {reason} while trying to {doing}: {message}"


def namespace_missing(message: str) -> bool:
    """Whether a 404's message says the namespace is missing ('namespaces "kts" not found'),
    not the object or the API (whose URL names the namespace too)."""
    return re.search(r'namespaces? "[^"]*" not found', message) is not None


def typed_error(exc: Any, host: str, settings: ClusterSettings, doing: str) -> ApiError:
    """The client's ``ApiException`` as the :class:`~.errors.ApiError` for its status, with
    the one-line message a user reads."""
    status = int(getattr(exc, "status", 0) or 0)
    return error_class(status)(
        api_error_line(exc, host, settings, doing),
        status=status,
        reason=one_line(getattr(exc, "reason", "") or ""),
        message=status_message(exc),
        headers=getattr(exc, "headers", None) or {},
    )


def status_message(exc: Any) -> str:
    """The ``message`` of a Kubernetes Status body, or the raw body in a few words."""
    body = getattr(exc, "body", None)
    if not body:
        return ""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("message"):
            return one_line(data["message"])[:400]
    except (ValueError, TypeError):
        pass
    return one_line(body)[:200]


# --------------------------------------------------------------------------- the one client

# Answers worth another try: the server is overloaded or restarting, not saying "no".
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class Client:
    """Every API call of the backend goes through here, each with a deadline.

    A call gets ``_request_timeout`` (connect, read), the read time clipped to the caller's
    ``deadline``; it is tried at most ``knobs.API_ATTEMPTS`` times, with exponential backoff
    (or the server's ``Retry-After``), when the server does not answer or answers 429/5xx.
    A call that still fails raises :class:`ApiUnreachable` whose message is one line naming
    the API server and what was in flight. urllib3's own retries are off (``connect``).
    """

    def __init__(self, clients: ClusterClients, settings: ClusterSettings) -> None:
        self.clients = clients
        self.settings = settings
        self.host = clients.host
        self.core = clients.core
        self.batch = clients.batch
        self.custom = clients.custom
        self.namespace = settings.namespace
        self._lock = threading.Lock()
        self.failing_since: float | None = None  # first failure of the current run of failures
        self.last_failure = ""  # "<doing>: <why>" of the latest failure
        self.failures = 0  # calls that failed (each attempt counts), for facts()

    # -- bookkeeping -----------------------------------------------------------------------

    def _failed(self, doing: str, why: str, track: bool = True) -> None:
        with self._lock:
            self.failures += 1
            if track:
                self.last_failure = f"{doing}: {why}"
                if self.failing_since is None:
                    self.failing_since = time.monotonic()

    def _answered(self, track: bool = True) -> None:
        if track:
            with self._lock:
                self.failing_since = None

    def unreachable_line(self, doing: str, why: str, attempts: int, since: float) -> str:
        return (
            f"the Kubernetes API server at {self.host} stopped answering while trying to "
            f"{doing}: {why} ({attempts} attempt{'s' if attempts != 1 else ''} over "
            f"{time.monotonic() - since:.0f} s); check that the API server is up and reachable"
        )

    def timeout(
        self, deadline: float | None = None, read_s: float | None = None
    ) -> tuple[float, float]:
        """``_request_timeout`` for one attempt: (connect, read), clipped to ``deadline``."""
        read = knobs.REQUEST_TIMEOUT_S if read_s is None else read_s
        if deadline is not None:
            read = min(read, max(deadline - time.monotonic(), knobs.MIN_REQUEST_TIMEOUT_S))
        return (min(knobs.CONNECT_TIMEOUT_S, read), read)

    # -- calls -----------------------------------------------------------------------------

    def call(
        self,
        fn: Any,
        *args: Any,
        doing: str,
        deadline: float | None = None,
        attempts: int | None = None,
        read_s: float | None = None,
        track: bool = True,
        **kwargs: Any,
    ) -> Any:
        """``fn(*args, **kwargs)`` with a timeout and bounded retries.

        A refusal raises the :class:`~.errors.ApiError` of its status (:class:`ApiNotFound`,
        :class:`ApiBadRequest`, ...; one line for the user, the status as an attribute); no
        answer, or 429/5xx until the retries ran out, :class:`ApiUnreachable`.
        ``track=False`` (the log threads' calls): the answer or its absence does not change
        :attr:`failing_since`, which speaks for the calls that drive the phase.
        """
        names = api()
        tries = max(1, knobs.API_ATTEMPTS if attempts is None else attempts)
        delay = knobs.API_BACKOFF_S
        started = time.monotonic()
        for attempt in range(1, tries + 1):
            kwargs["_request_timeout"] = self.timeout(deadline, read_s)
            try:
                result = fn(*args, **kwargs)
            except names.ApiException as exc:
                if exc.status not in TRANSIENT_STATUS:
                    self._answered(track)
                    raise typed_error(exc, self.host, self.settings, doing) from None
                why = f"answered {exc.status} {one_line(exc.reason or '')}".rstrip()
                wait = _retry_after(exc, delay)
            except names.transport_errors as exc:
                why = connection_why(exc)
                wait = delay
            else:
                self._answered(track)
                return result
            self._failed(doing, why, track)
            late = deadline is not None and time.monotonic() + wait >= deadline
            if attempt == tries or late:
                raise ApiUnreachable(self.unreachable_line(doing, why, attempt, started))
            log.debug("%s: %s; retrying in %.1f s", doing, why, wait)
            time.sleep(wait)
            delay = min(delay * 2, knobs.API_BACKOFF_MAX_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def watch_jobs(
        self, selector: str, resource_version: str, segment_s: int, *, doing: str = "watch Jobs"
    ) -> Any:
        """Job events for ``segment_s`` seconds from ``resource_version``, then the end.

        Raises :class:`ApiGone` on 410 Gone, :class:`ApiUnreachable` when the watch could
        not be opened or went silent past its read timeout, the status's :class:`ApiError`
        otherwise.
        """
        names = api()
        watcher = names.Watch()
        started = time.monotonic()
        try:
            for event in watcher.stream(
                self.batch.list_namespaced_job,
                self.namespace,
                label_selector=selector,
                resource_version=resource_version,
                timeout_seconds=segment_s,
                _request_timeout=(knobs.CONNECT_TIMEOUT_S, segment_s + knobs.WATCH_SLACK_S),
            ):
                self._answered()
                if event.get("type") == "BOOKMARK":
                    event = {**event, "resource_version": watcher.resource_version}
                yield event
        except names.ApiException as exc:
            if exc.status == 410:
                raise typed_error(exc, self.host, self.settings, doing) from None
            if exc.status in TRANSIENT_STATUS:
                why = f"answered {exc.status} {one_line(exc.reason or '')}".rstrip()
                self._failed(doing, why)
                raise ApiUnreachable(self.unreachable_line(doing, why, 1, started)) from None
            raise typed_error(exc, self.host, self.settings, doing) from None
        except names.transport_errors as exc:
            why = connection_why(exc)
            self._failed(doing, why)
            raise ApiUnreachable(self.unreachable_line(doing, why, 1, started)) from None
        finally:
            watcher.stop()

    def events(self, name: str, *, deadline: float | None = None) -> list[Any]:
        """Events about the object ``name`` (one short try: they only decorate an error)."""
        return (
            self.call(
                self.core.list_namespaced_event,
                self.namespace,
                field_selector=f"involvedObject.name={name}",
                doing=f"list the events of {name}",
                deadline=deadline,
                attempts=1,
                read_s=knobs.REACH_TIMEOUT_S,
            ).items
            or []
        )

    def close(self) -> None:
        self.clients.close()


def _retry_after(exc: Any, default: float) -> float:
    """The server's ``Retry-After`` (seconds) when it gave one, capped; else ``default``."""
    headers = getattr(exc, "headers", None) or {}
    try:
        value = float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return default
    return min(max(value, 0.0), knobs.API_BACKOFF_MAX_S)
