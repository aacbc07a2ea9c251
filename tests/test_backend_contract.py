"""One contract, every backend: local processes, one streams process, Kubernetes Jobs (on the
fake cluster, running the real ``pytest_kts.workers.run`` on the CPU).

What a runner may count on from any backend (pytest_kts/backends/base.py):

- phases: a solo phase returns lines of its one tenant only; every sample is tagged with its
  tenant and phase; every tenant reaches its target (a shared phase may keep some running);
- the barrier: the tenants of a shared phase measure at the same time;
- failures: a tenant that crashes or hangs ends the phase with a ``WorkerError`` naming it
  (the exception type and message, never an OOM it did not have);
- cleanup: after ``close()`` (twice is fine) no worker process and no Job is left.

Backend-specific behaviour (streams' routing of stray prints, the Job's events, ...) stays in
each backend's own test file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_kts.backends.base import Backend, PhasePlan, TenantSpec
from pytest_kts.constants import WORKER_MODULE
from pytest_kts.errors import WorkerError

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(HERE)}
KINDS = ["local", "streams", "kubernetes"]


@dataclass
class Harness:
    """A backend to test, and how to tell that nothing of it is left."""

    kind: str
    make: Callable[[], Backend]
    leftovers: Callable[[Backend], list[str]]
    startup_s: float  # what a phase's timeout must allow for before the first iteration


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _local_leftovers(backend: Any) -> list[str]:
    pids = {w.process.pid for w in backend._workers.values()}
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"process {p}" for p in sorted(pids) if _alive(p)]


@pytest.fixture(params=KINDS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    kind = request.param
    if kind == "local":
        from pytest_kts.backends.local import LocalBackend

        yield Harness(kind, lambda: LocalBackend(env=ENV), _local_leftovers, 0.0)
    elif kind == "streams":
        from pytest_kts.backends.streams import StreamsBackend

        yield Harness(kind, lambda: StreamsBackend(env=ENV), _local_leftovers, 0.0)
    else:
        pytest.importorskip("kubernetes")
        pytest.importorskip("kmock")
        from pytest_kts.backends import kubernetes as kb
        from pytest_kts.backends.kubernetes import settings as knobs
        from tests.fake_cluster import FakeCluster
        from tests.test_kubernetes_backend import _new_threads, make_settings

        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(knobs, "START_LEAD_DEFAULT_S", 3.0)  # pods start in ~seconds here
        before = set(threading.enumerate())
        cluster = FakeCluster().start()
        settings = make_settings(cluster, tmp_path, worker_command=("python", "-m", WORKER_MODULE))

        def leftovers(backend: Backend) -> list[str]:
            jobs = [f"Job {j['metadata']['name']}" for j in cluster.jobs()]
            deadline = time.monotonic() + 10
            while cluster.live_processes() and time.monotonic() < deadline:
                time.sleep(0.1)
            return jobs + [f"container process {p}" for p in cluster.live_processes()]

        try:
            yield Harness(kind, lambda: kb.KubernetesBackend(settings), leftovers, 30.0)
        finally:
            cluster.stop()
            assert cluster.live_processes() == []
            assert _new_threads(before) == [], "threads outlived the test"


def spec(name: str, workload: str = "fft", **kw: Any) -> TenantSpec:
    return TenantSpec(name=name, workload=workload, size=16, warmup=1, env=ENV, **kw)


def _span(samples: list[Any]) -> tuple[int, int]:
    return min(s.start_ns for s in samples), max(s.end_ns for s in samples)


# --------------------------------------------------------------------------- the contract


def test_phases_and_the_shared_barrier(harness: Harness) -> None:
    backend = harness.make()
    timeout = harness.startup_s + 60
    with backend:
        backend.start([spec("a", sleep_ms=1.0), spec("b", "matmul", sleep_ms=2.0)], "cpu")
        solo_a = backend.run_phase(PhasePlan("solo", 0, {"a": 20}), timeout)
        solo_b = backend.run_phase(PhasePlan("solo", 0, {"b": 10}), timeout)
        shared = backend.run_phase(PhasePlan("shared", 0, {"a": 20, "b": 10}), timeout)
        facts = backend.facts()
    for out, tenant, target in ((solo_a, "a", 20), (solo_b, "b", 10)):
        assert set(out.readers) == {tenant}  # a solo phase: its tenant only
        samples = out.readers[tenant].samples
        assert len(samples) >= target
        assert {(s.tenant, s.phase) for s in samples} == {(tenant, "solo")}
        assert out.started_ns <= samples[0].start_ns and samples[-1].end_ns <= out.ended_ns
    assert set(shared.readers) == {"a", "b"}
    for tenant in ("a", "b"):
        samples = shared.readers[tenant].samples
        assert samples, tenant
        assert {(s.tenant, s.phase) for s in samples} == {(tenant, "shared")}
        assert all(r.malformed == 0 for r in shared.readers.values())
    # The barrier: the two measured at the same time, over a window that holds samples of both.
    (a0, a1), (b0, b1) = _span(shared.readers["a"].samples), _span(shared.readers["b"].samples)
    assert max(a0, b0) < min(a1, b1)
    assert facts["backend"] in {"local", "streams", "kubernetes"}
    assert set(facts["tenants"]) == {"a", "b"}
    assert harness.leftovers(backend) == []
    backend.close()  # closing twice is harmless


def test_a_crashing_tenant_is_named_with_its_exception(harness: Harness) -> None:
    backend = harness.make()
    with backend:
        backend.start([spec("bad", "kts_test_workloads:crash", params={"after": "5"})], "cpu")
        with pytest.raises(WorkerError) as info:
            backend.run_phase(PhasePlan("solo", 0, {"bad": 50}), harness.startup_s + 60)
    error = info.value
    assert error.tenant == "bad"
    assert error.oom is False
    assert "RuntimeError" in str(error) and "simulated worker crash" in str(error)
    assert harness.leftovers(backend) == []


def test_a_torch_out_of_memory_is_named_oom(harness: Harness) -> None:
    backend = harness.make()
    with backend:
        backend.start([spec("big", "kts_test_workloads:oom", params={"after": "3"})], "cpu")
        with pytest.raises(WorkerError) as info:
            backend.run_phase(PhasePlan("solo", 0, {"big": 50}), harness.startup_s + 60)
    assert info.value.tenant == "big" and info.value.oom is True
    assert "CUDA out of memory" in str(info.value)
    assert harness.leftovers(backend) == []


def test_a_hung_tenant_times_out_naming_it(harness: Harness) -> None:
    backend = harness.make()
    with backend:
        tenants = [spec("busy"), spec("stuck", "kts_test_workloads:hang", params={"after": "3"})]
        backend.start(tenants, "cpu")
        with pytest.raises(WorkerError) as info:
            plan = PhasePlan("shared", 0, {"busy": 10, "stuck": 10})
            backend.run_phase(plan, harness.startup_s + 3)
    assert info.value.tenant == "stuck"
    assert "hung" in str(info.value)
    assert harness.leftovers(backend) == []


def test_nothing_is_left_after_close_even_mid_phase(harness: Harness) -> None:
    """An error raised into a phase (Ctrl-C, SIGTERM) still leaves nothing behind."""
    import _thread

    backend = harness.make()
    with backend:
        backend.start([spec("a", sleep_ms=5.0)], "cpu")
        interrupt = threading.Timer(harness.startup_s / 3 + 1.0, _thread.interrupt_main)
        interrupt.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                backend.run_phase(PhasePlan("solo", 0, {"a": 1_000_000}), harness.startup_s + 60)
        finally:
            interrupt.cancel()
    assert harness.leftovers(backend) == []
    assert os.environ.get("KTS_PARENT_PID") is None  # nothing leaked into our environment


# --------------------------------------------------------------------------- what a backend offers


def _backend_classes() -> list[type[Backend]]:
    from pytest_kts.backends.kubernetes import KubernetesBackend
    from pytest_kts.backends.local import LocalBackend
    from pytest_kts.backends.streams import StreamsBackend

    return [LocalBackend, StreamsBackend, KubernetesBackend]


def test_a_backend_says_what_it_offers_in_the_base_class() -> None:
    """Callers ask ``backend.check_colocated()`` and ``backend.reusable``; no getattr probes."""

    class Bare(Backend):
        def start(self, tenants: Any, device: str) -> None: ...
        def run_phase(self, plan: PhasePlan, timeout_s: float) -> Any: ...
        def close(self) -> None: ...

    bare = Bare()
    assert bare.check_colocated() is None and bare.checks_colocation is False
    assert bare.reusable is False
    for cls in _backend_classes():
        # A backend that claims the check implements it; one that implements it says so.
        overrides = cls.check_colocated is not Backend.check_colocated
        assert cls.checks_colocation == overrides, cls.__name__
        assert cls.checks_colocation, f"{cls.__name__} must verify co-location by GPU UUID"
