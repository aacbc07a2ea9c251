"""The fake cluster as tests use it: a thread with its own event loop, a URL and a kubeconfig.

    with FakeCluster() as cluster:
        cluster.script(PodBehaviour(image_pull_error=True), tenant="b")
        settings = ClusterSettings(kubeconfig=str(cluster.write_kubeconfig(tmp_path)))
        ...

Stopping it kills every container process, ends every stream and joins the thread: nothing
is left behind (the tests check).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml

from tests.fake_cluster.controller import Controller, PodBehaviour
from tests.fake_cluster.emulator import CLAIMS, EVENTS, JOBS, PODS, ClusterEmulator
from tests.fake_cluster.gpus import FakeGpus

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


class FakeCluster:
    """A Kubernetes API server on 127.0.0.1 whose Jobs run as local processes."""

    def __init__(
        self,
        *,
        workdir: Path = REPO,
        node_name: str = "fake-node",
        gpus_per_node: int = 4,
        namespaces: tuple[str, ...] = ("default", "kts"),
        runtime_classes: tuple[str, ...] = ("nvidia",),
        gpu_uuids: tuple[str, ...] | None = None,
        dra: bool = False,
        hami: bool = False,
        kai: bool = False,
    ) -> None:
        """``gpu_uuids``: the node's physical GPUs, handed out by UUID (:mod:`.gpus`): the
        device plugin's replicas, or HAMi's (``hami``), KAI's fractions (``kai``: the
        ``kai-scheduler`` runs), DRA claims (``dra``: ``resource.k8s.io/v1`` is served and
        DeviceClass ``gpu.nvidia.com`` exists)."""
        self.workdir = workdir
        self.gpus = (
            FakeGpus(gpu_uuids, hami=hami, dra_classes=("gpu.nvidia.com",) if dra else ())
            if gpu_uuids
            else None
        )
        self.dra = dra
        self.schedulers = {"default-scheduler", *(("kai-scheduler",) if kai else ())}
        self.node_name = node_name
        self.gpus_per_node = gpus_per_node
        self.namespaces = set(namespaces)
        self.runtime_classes = set(runtime_classes)
        self.url = ""
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.emulator: ClusterEmulator | None = None
        self.controller: Controller | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeCluster:
        self._thread = threading.Thread(target=self._run, name="fake-cluster", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the fake cluster did not start within 15 s")
        if self._failure is not None:
            raise RuntimeError("the fake cluster failed to start") from self._failure
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError("the fake cluster's thread did not end within 30 s")
        self._thread = None

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = ClusterEmulator(namespaces=set(self.namespaces), dra=self.dra)
        controller = Controller(
            emulator,
            workdir=self.workdir,
            node_name=self.node_name,
            gpus_per_node=self.gpus_per_node,
            runtime_classes=self.runtime_classes,
            gpus=self.gpus,
            schedulers=self.schedulers,
        )
        emulator.controller = controller
        self.emulator, self.controller = emulator, controller
        async with emulator, kmock.Server(emulator, user_agent="") as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
            await controller.shutdown()
            await emulator.shutdown()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the cluster's loop (its state is only touched there)."""
        assert self._loop is not None

        async def wrapper() -> T:
            return fn()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            wrapper(), self._loop
        )
        return future.result(10)

    # -- configuration --------------------------------------------------------------------

    def write_kubeconfig(
        self, directory: Path, *, context: str = "fake", url: str | None = None
    ) -> Path:
        """A kubeconfig for this cluster (plain HTTP, no credentials); ``url``: reach it there
        instead (a :class:`~tests.fake_cluster.faults.FaultProxy` in front of it)."""
        path = Path(directory) / "kubeconfig.yaml"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": url or self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": "fake", "user": "fake", "namespace": "kts"},
                }
            ],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- scripting ------------------------------------------------------------------------

    def script(
        self, behaviour: PodBehaviour, *, tenant: str | None = None, phase: str | None = None
    ) -> None:
        """Pods of ``tenant`` (and ``phase``) behave so; the first matching script wins."""
        match = {k: v for k, v in (("kts.tenant", tenant), ("kts.phase", phase)) if v}
        self.call(lambda: self._controller.scripts.append((match, behaviour)))

    def expire_next_watches(self, count: int = 1) -> None:
        """The next ``count`` watches that resume from a resourceVersion end in 410 Gone."""

        def expire() -> None:
            self._emulator.expire_watches += count

        self.call(expire)

    def fail_requests(
        self, status: int, count: int, *, verb: str | None = None, resource: str | None = None
    ) -> None:
        """The next ``count`` requests (of ``verb`` on ``resource``: "list", "jobs") answer
        ``status`` (429 TooManyRequests, 500 InternalError, ...) instead of being served."""
        self.call(lambda: self._emulator.faults.append([status, count, verb, resource]))

    @property
    def faults_served(self) -> int:
        return self.call(lambda: self._emulator.faults_served)

    # -- inspection -----------------------------------------------------------------------

    @property
    def _emulator(self) -> ClusterEmulator:
        assert self.emulator is not None
        return self.emulator

    @property
    def _controller(self) -> Controller:
        assert self.controller is not None
        return self.controller

    def jobs(self, namespace: str = "kts") -> list[dict[str, Any]]:
        return self.call(lambda: self._emulator.list(JOBS, namespace))

    def pods(self, namespace: str = "kts") -> list[dict[str, Any]]:
        return self.call(lambda: self._emulator.list(PODS, namespace))

    def events(self, namespace: str = "kts") -> list[dict[str, Any]]:
        return self.call(lambda: self._emulator.list(EVENTS, namespace))

    def claims(self, namespace: str = "kts") -> list[dict[str, Any]]:
        return self.call(lambda: self._emulator.list(CLAIMS, namespace))

    def created_claims(self) -> list[dict[str, Any]]:
        """Every ResourceClaim ever created, as created (deleted ones too)."""
        return self.created(CLAIMS)

    def created_jobs(self) -> list[dict[str, Any]]:
        """Every Job ever created, as created (deleted ones too)."""
        return self.created(JOBS)

    def created(self, kind: Any) -> list[dict[str, Any]]:
        def collect() -> list[dict[str, Any]]:
            found = []
            for (resource, _, _), obj in self._emulator.objects.items():
                if resource == kind:
                    first = obj.history[0]
                    if first is not None:
                        found.append(copy.deepcopy(first.raw))
            return found

        return self.call(collect)

    @property
    def watches_expired(self) -> int:
        return self.call(lambda: self._emulator.watches_expired)

    @property
    def log_waits(self) -> int:
        return self.call(lambda: self._emulator.log_waits)

    @property
    def seen(self) -> list[tuple[str, str, str, str]]:
        """(verb, resource, subresource, namespace) of every API request, in order."""
        return self.call(lambda: list(self._emulator.seen))

    def live_processes(self) -> list[int]:
        """Pids of container processes that still exist (zombies are not reaped yet: alive)."""
        # A plain read of a list the loop only appends to: safe, and works after stop().
        pids = list(self._controller.started_pids)
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            alive.append(pid)
        return alive

    def started_processes(self) -> list[int]:
        return list(self._controller.started_pids)


__all__ = ["FakeCluster", "PodBehaviour"]
