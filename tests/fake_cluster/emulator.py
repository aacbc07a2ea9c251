"""The API-server half of the fake cluster: kmock's emulator with the semantics we rely on.

kmock (``kmock.KubernetesEmulator``) gives us the HTTP server, the parsing of Kubernetes
URLs into (action, resource, namespace, name, subresource), Status-shaped error bodies and an
object store whose history tests can inspect. What it lacks for a Job backend, and this
subclass adds:

- ``metadata.resourceVersion`` on every write and a change log, so that a watch resumes from
  a resourceVersion (kmock streams from "now" only) and ends after ``timeoutSeconds``;
- label and field selectors on list and watch (``kts.run-id=..``, ``involvedObject.name=..``);
- a forced ``410 Gone`` (an ERROR event with code 410) on the next N watches that resume;
- ``pods/{name}/log`` with ``follow`` and ``timestamps``, answering 400 while the container
  is being created, the way the kubelet does;
- deletion with ``propagationPolicy`` (Background/Foreground delete a Job's pods; Orphan, the
  API's default for Jobs, leaves them running);
- ``resource.k8s.io/v1`` ResourceClaims when the fake serves DRA (``dra``), validated as the
  API server would our claims; otherwise that API answers 404, as on a cluster without it;
- hooks for the controller (:mod:`.controller`): a created Job makes a Pod that runs.

Everything runs on one asyncio loop (the fake cluster's thread), so no locks are needed.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import attrs
import kmock

if TYPE_CHECKING:
    from tests.fake_cluster.controller import Controller, PodLog

JOBS = kmock.resource(group="batch", version="v1", plural="jobs")
PODS = kmock.resource(group="", version="v1", plural="pods")
EVENTS = kmock.resource(group="", version="v1", plural="events")
CLAIMS = kmock.resource(group="resource.k8s.io", version="v1", plural="resourceclaims")
KINDS: dict[Any, tuple[str, str]] = {
    JOBS: ("batch/v1", "Job"),
    PODS: ("v1", "Pod"),
    EVENTS: ("v1", "Event"),
    CLAIMS: ("resource.k8s.io/v1", "ResourceClaim"),
}

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def rfc3339(ns: int | None = None) -> str:
    """Seconds precision, as in ``metadata.creationTimestamp``."""
    seconds = (time.time_ns() if ns is None else ns) // 1_000_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def rfc3339nano(ns: int) -> str:
    """Go's RFC3339Nano, as the kubelet prefixes log lines: trailing zeros trimmed."""
    seconds, frac = divmod(ns, 1_000_000_000)
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{frac:09d}".rstrip("0")
    return f"{head}.{digits}Z" if digits else f"{head}Z"


def error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def _qualified(resource: Any) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def not_found(resource: Any, name: str) -> kmock.KubernetesError:
    return error(404, "NotFound", f'{_qualified(resource)} "{name}" not found')


def _path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _split_terms(text: str) -> list[str]:
    return [t.strip() for t in re.split(r",(?![^()]*\))", text) if t.strip()]


def _label_test(key: str, op: str, values: set[str]) -> Callable[[dict[str, str]], bool]:
    def test(labels: dict[str, str]) -> bool:
        if op == "exists":
            return key in labels
        if op == "!exists":
            return key not in labels
        if op in ("=", "in"):
            return labels.get(key) in values
        return labels.get(key) not in values  # "!=", "notin"

    return test


def label_matcher(text: str) -> Callable[[dict[str, str]], bool]:
    """A label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``notin``."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(text):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            values = {v.strip() for v in m.group(3).split(",")}
            tests.append(_label_test(m.group(1), m.group(2), values))
        elif "!=" in term:
            key, value = term.split("!=", 1)
            tests.append(_label_test(key.strip(), "!=", {value.strip()}))
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            tests.append(_label_test(key.strip(), "=", {value.strip()}))
        elif term.startswith("!"):
            tests.append(_label_test(term[1:].strip(), "!exists", set()))
        else:
            tests.append(_label_test(term, "exists", set()))
    return lambda labels: all(test(labels) for test in tests)


def _field_test(key: str, equal: bool, value: str) -> Callable[[dict[str, Any]], bool]:
    def test(obj: dict[str, Any]) -> bool:
        found = _path(obj, key)
        return (str(found if found is not None else "") == value) == equal

    return test


def field_matcher(text: str) -> Callable[[dict[str, Any]], bool]:
    """A field selector: ``a.b=v``, ``a.b==v``, ``a.b!=v`` over the object's fields."""
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for term in _split_terms(text):
        if "!=" in term:
            key, value = term.split("!=", 1)
            tests.append(_field_test(key.strip(), False, value.strip()))
        else:
            key, value = term.replace("==", "=").split("=", 1)
            tests.append(_field_test(key.strip(), True, value.strip()))
    return lambda obj: all(test(obj) for test in tests)


def _check_labels(labels: Any, where: str) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise error(422, "Invalid", f"{where}: labels must be a map")
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if not _LABEL_NAME.match(name) or len(name) > 63:
            raise error(422, "Invalid", f"{where}: label key {key!r} has an invalid name part")
        if prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix)):
            raise error(422, "Invalid", f"{where}: label key {key!r} has an invalid prefix")
        if not isinstance(value, str) or len(value) > 63:
            raise error(422, "Invalid", f"{where}: label {key}={value!r} is too long or no string")
        if value and not _LABEL_NAME.match(value):
            raise error(422, "Invalid", f"{where}: label value {value!r} is invalid")


def validate_job(job: dict[str, Any]) -> None:
    """The checks of the API server that our manifests could plausibly fail."""
    name = _path(job, "metadata.name") or ""
    if len(name) > 63 or not _NAME.match(name):
        raise error(
            422,
            "Invalid",
            f'Job.batch "{name}" is invalid: metadata.name: must be no more than '
            "63 characters and a lowercase RFC 1123 label",
        )
    _check_labels(_path(job, "metadata.labels"), f'Job.batch "{name}"')
    _check_labels(_path(job, "spec.template.metadata.labels"), f'Job.batch "{name}" template')
    pod = _path(job, "spec.template.spec")
    if not isinstance(pod, dict) or not pod.get("containers"):
        raise error(
            422,
            "Invalid",
            f'Job.batch "{name}" is invalid: spec.template.spec.containers: Required value',
        )
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        raise error(
            422,
            "Invalid",
            f'Job.batch "{name}" is invalid: spec.template.spec.restartPolicy: '
            'Required value: valid values: "OnFailure", "Never"',
        )
    for container in pod["containers"]:
        if not container.get("name") or not container.get("image"):
            raise error(
                422, "Invalid", f'Job.batch "{name}": a container needs a name and an image'
            )
        for key in ("requests", "limits"):
            for res, qty in (container.get("resources", {}).get(key) or {}).items():
                if not isinstance(qty, str | int):
                    raise error(422, "Invalid", f"{res}: quantity {qty!r} is not a quantity")


def validate_claim(claim: dict[str, Any]) -> None:
    """What the API server checks of a ResourceClaim that our claims could plausibly fail."""
    name = _path(claim, "metadata.name") or ""
    if len(name) > 63 or not _NAME.match(name):
        raise error(422, "Invalid", f'ResourceClaim.resource.k8s.io "{name}": metadata.name')
    _check_labels(_path(claim, "metadata.labels"), f'ResourceClaim "{name}"')
    requests = _path(claim, "spec.devices.requests")
    if not isinstance(requests, list) or not requests:
        raise error(422, "Invalid", f'ResourceClaim "{name}": spec.devices.requests: Required')
    for request in requests:
        if not request.get("name") or not _path(request, "exactly.deviceClassName"):
            raise error(
                422, "Invalid", f'ResourceClaim "{name}": a request needs a name and exactly.'
                "deviceClassName"
            )  # fmt: skip


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """The Kubernetes API for Jobs, Pods, pod logs and Events, as a real HTTP server."""

    namespaces: set[str] = attrs.field(factory=lambda: {"default", "kts"})
    controller: Controller | None = None
    dra: bool = False  # whether resource.k8s.io/v1 is served (a DRA-enabled cluster)
    expire_watches: int = 0  # the next N watches that resume from a resourceVersion get 410
    watches_expired: int = 0
    log_waits: int = 0  # log requests answered 400: the container is not running yet
    seen: list[tuple[str, str, str, str]] = attrs.field(factory=list)  # verb, resource, sub, ns
    # Injected failures: [status, count left, verb or None, resource plural or None], in order.
    faults: list[list[Any]] = attrs.field(factory=list)
    faults_served: int = 0
    closing: asyncio.Event = attrs.field(factory=asyncio.Event)
    _rv: int = attrs.field(default=100, init=False)
    _changes: list[tuple[int, Any, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # The Python client asks for "/version/"; kmock serves "/version" only.
        self.fallback["get /version/"] << self._serve_server_version

    # -- the store ------------------------------------------------------------------------

    def get(self, resource: Any, namespace: str | None, name: str | None) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def list(self, resource: Any, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj.raw)
            for (res, ns, _), obj in self.objects.items()
            if res == resource and not obj.deleted and (namespace is None or ns == namespace)
        ]

    async def write(self, resource: Any, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        """Store a new version (ADDED / MODIFIED / DELETED) and tell the watches."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        api_version, kind_name = KINDS[resource]
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind_name)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        key = (resource, meta.get("namespace"), meta["name"])
        if kind == "DELETED":
            self.objects[key].history.append(obj)
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        self._changes.append((self._rv, resource, {"type": kind, "object": obj}))
        async with self._changed:
            self._changed.notify_all()
        return copy.deepcopy(obj)

    async def create(self, resource: Any, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", rfc3339())
        meta.setdefault("generation", 1)
        return await self.write(resource, obj, "ADDED")

    async def modify(
        self, resource: Any, namespace: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any] | None:
        """Apply ``change`` to the current object; None if it is gone."""
        obj = self.get(resource, namespace, name)
        if obj is None:
            return None
        change(obj)
        return await self.write(resource, obj, "MODIFIED")

    async def remove(self, resource: Any, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.get(resource, namespace, name)
        if obj is None:
            return None
        obj["metadata"]["deletionTimestamp"] = rfc3339()
        return await self.write(resource, obj, "DELETED")

    async def record_event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, component: str
    ) -> None:
        meta = involved["metadata"]
        now = rfc3339()
        await self.create(
            EVENTS,
            {
                "metadata": {
                    "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                    "namespace": meta["namespace"],
                },
                "involvedObject": {
                    "apiVersion": involved.get("apiVersion"),
                    "kind": involved.get("kind"),
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                },
                "type": type_,
                "reason": reason,
                "message": message,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": component},
                "reportingComponent": component,
            },
        )

    async def shutdown(self) -> None:
        self.closing.set()
        async with self._changed:
            self._changed.notify_all()

    # -- HTTP -----------------------------------------------------------------------------

    async def _handle(self, request: Any) -> Any:
        # kmock's emulator stores objects as they come in before routing; we store in the
        # handlers below instead (with resourceVersions), so skip straight to the routing.
        if request.resource is not None and request.action is not None:
            verb = {
                "LIST": "list",
                "WATCH": "watch",
                "FETCH": "get",
                "CREATE": "create",
                "UPDATE": "patch",
                "DELETE": "delete",
            }[request.action.name]
            self.seen.append(
                (
                    verb,
                    request.resource.plural or "",
                    request.subresource or "",
                    request.namespace or "",
                )
            )
            for fault in self.faults:
                status, left, want_verb, want_resource = fault
                if left <= 0 or want_verb not in (None, verb):
                    continue
                if want_resource not in (None, request.resource.plural):
                    continue
                fault[1] -= 1
                self.faults_served += 1
                reason = "TooManyRequests" if status == 429 else "InternalError"
                raise error(status, reason, f"injected {status} for {verb} {want_resource or ''}")
        return await kmock.RawHandler._handle(self, request)

    def _known(self, request: Any) -> Any:
        for resource in KINDS:
            if resource == request.resource and (resource != CLAIMS or self.dra):
                return resource
        raise error(
            404,
            "NotFound",
            f"the server could not find the requested resource ({request.url.path})",
        )

    def _selected(self, obj: dict[str, Any], params: dict[str, str]) -> bool:
        labels = _path(obj, "metadata.labels") or {}
        if params.get("labelSelector") and not label_matcher(params["labelSelector"])(labels):
            return False
        return not (params.get("fieldSelector") and not field_matcher(params["fieldSelector"])(obj))

    async def _serve_list(self, request: Any) -> dict[str, Any]:
        resource = self._known(request)
        items = [
            o for o in self.list(resource, request.namespace) if self._selected(o, request.params)
        ]
        if request.params.get("limit"):
            items = items[: int(request.params["limit"])]
        api_version, kind = KINDS[resource]
        return {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    async def _serve_fetch(self, request: Any) -> Any:
        resource = self._known(request)
        if resource == PODS and request.subresource == "log":
            return await self._serve_log(request)
        if request.subresource:
            raise error(404, "NotFound", f"no subresource {request.subresource!r} here")
        obj = self.get(resource, request.namespace, request.name)
        if obj is None:
            raise not_found(resource, request.name)
        return obj

    async def _serve_create(self, request: Any) -> dict[str, Any]:
        resource = self._known(request)
        namespace = request.namespace
        if namespace not in self.namespaces:
            raise error(404, "NotFound", f'namespaces "{namespace}" not found')
        body = request.data
        if not isinstance(body, dict):
            raise error(400, "BadRequest", "the body of the request is no JSON object")
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise error(400, "BadRequest", "the namespace of the object does not match the URL")
        meta["namespace"] = namespace
        if not meta.get("name"):
            raise error(422, "Invalid", "metadata.name: Required value")
        if self.get(resource, namespace, meta["name"]) is not None:
            raise error(
                409, "AlreadyExists", f'{_qualified(resource)} "{meta["name"]}" already exists'
            )
        if resource == JOBS:
            validate_job(body)
            spec = body["spec"]
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            body["status"] = {}
        if resource == CLAIMS:
            validate_claim(body)
            body["status"] = {}
        obj = await self.create(resource, body)
        if resource == JOBS and self.controller is not None:
            self.controller.job_created(obj)
        return obj

    async def _serve_update(self, request: Any) -> dict[str, Any]:
        resource = self._known(request)
        patch = request.data if isinstance(request.data, dict) else {}

        def merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
            for key, value in changes.items():
                if value is None:
                    target.pop(key, None)
                elif isinstance(value, dict) and isinstance(target.get(key), dict):
                    merge(target[key], value)
                else:
                    target[key] = value

        obj = await self.modify(
            resource, request.namespace, request.name, lambda o: merge(o, patch)
        )
        if obj is None:
            raise not_found(resource, request.name)
        return obj

    async def _serve_delete(self, request: Any) -> dict[str, Any]:
        resource = self._known(request)
        obj = self.get(resource, request.namespace, request.name)
        if obj is None:
            raise not_found(resource, request.name)
        body = request.data if isinstance(request.data, dict) else {}
        policy = body.get("propagationPolicy") or request.params.get("propagationPolicy")
        if policy is None:
            # batch/v1 Jobs orphan their pods unless told otherwise (kept for compatibility).
            policy = "Orphan" if resource == JOBS else "Background"
        await self.remove(resource, request.namespace, request.name)
        if resource == PODS and self.controller is not None:
            await self.controller.pod_deleted(obj)
        if resource == CLAIMS and self.controller is not None:
            self.controller.claim_deleted(obj)
        if resource == JOBS:
            uid = obj["metadata"]["uid"]
            if self.controller is not None:
                self.controller.job_deleted(obj)
            for pod in self.list(PODS, request.namespace):
                owners = pod["metadata"].get("ownerReferences") or []
                if not any(o.get("uid") == uid for o in owners):
                    continue
                if policy == "Orphan":
                    await self.modify(
                        PODS,
                        request.namespace,
                        pod["metadata"]["name"],
                        lambda p: p["metadata"].pop("ownerReferences", None),
                    )
                else:
                    await self.remove(PODS, request.namespace, pod["metadata"]["name"])
                    if self.controller is not None:
                        await self.controller.pod_deleted(pod)
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": request.name,
                "group": resource.group,
                "kind": resource.plural,
                "uid": obj["metadata"]["uid"],
            },
        }

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        resource = self._known(request)
        params = request.params
        since = params.get("resourceVersion") or ""
        timeout = float(params.get("timeoutSeconds") or 1800)
        namespace, name = request.namespace, request.name

        def wanted(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            if namespace is not None and meta.get("namespace") != namespace:
                return False
            if name is not None and meta.get("name") != name:
                return False
            return self._selected(obj, params)

        if since not in ("", "0") and self.expire_watches > 0:
            self.expire_watches -= 1
            self.watches_expired += 1
            return self._expired(since)
        return self._watch(resource, since, timeout, wanted)

    async def _expired(self, since: str) -> AsyncIterator[Any]:
        yield b""
        yield {
            "type": "ERROR",
            "object": {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {since} ({self._rv})",
                "reason": "Expired",
                "code": 410,
            },
        }

    async def _watch(
        self, resource: Any, since: str, timeout: float, wanted: Callable[[dict[str, Any]], bool]
    ) -> AsyncIterator[Any]:
        yield b""  # send the headers now, even if nothing happens
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if since in ("", "0"):
            cursor = self._rv
            for obj in self.list(resource):
                if wanted(obj):
                    yield {"type": "ADDED", "object": obj}
        else:
            cursor = int(since)
        while not self.closing.is_set():
            start = bisect.bisect_right(self._changes, cursor, key=lambda change: change[0])
            for rv, res, event in self._changes[start:]:
                cursor = rv
                if res == resource and wanted(event["object"]):
                    yield event
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            async with self._changed:
                if (self._changes and self._changes[-1][0] > cursor) or self.closing.is_set():
                    continue
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return

    async def _serve_log(self, request: Any) -> AsyncIterator[bytes]:
        namespace, name = request.namespace, request.name
        pod = self.get(PODS, namespace, name)
        if pod is None:
            raise not_found(PODS, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = request.params.get("container") or containers[0]
        if container not in containers:
            raise error(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if not _path(pod, "spec.nodeName"):
            self.log_waits += 1
            raise error(400, "BadRequest", f"pod {name} does not have a host assigned")
        plog = self.controller.log_of(pod) if self.controller is not None else None
        if plog is None or not plog.started:
            self.log_waits += 1
            reason = plog.waiting_reason if plog is not None else "ContainerCreating"
            raise error(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: {reason}',
            )
        follow = request.params.get("follow") == "true"
        timestamps = request.params.get("timestamps") == "true"
        return self._log(plog, follow=follow, timestamps=timestamps)

    async def _log(self, plog: PodLog, *, follow: bool, timestamps: bool) -> AsyncIterator[bytes]:
        yield b""
        sent = 0
        while True:
            batch = plog.lines[sent:]
            sent += len(batch)
            data = b"".join(
                ((rfc3339nano(ts) + " ").encode() if timestamps else b"") + line
                for ts, line in batch
            )
            if data and plog.chunk_bytes:
                # Lines split at arbitrary bytes, as TCP and HTTP chunks do to real logs.
                for at in range(0, len(data), plog.chunk_bytes):
                    yield data[at : at + plog.chunk_bytes]
                    await asyncio.sleep(0.001)
            elif data:
                yield data
            if plog.drop_after is not None and not plog.dropped and sent >= plog.drop_after:
                plog.dropped = True
                return  # the connection drops while the container still runs
            if not follow or self.closing.is_set() or (plog.finished and sent >= len(plog.lines)):
                return
            async with plog.changed:
                if len(plog.lines) > sent or plog.finished:
                    continue
                try:
                    await asyncio.wait_for(plog.changed.wait(), 0.25)
                except TimeoutError:
                    pass
