"""The local backend with real CPU worker processes: phases, barrier, failures, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.local import LocalBackend
from pytest_kts.errors import WorkerError

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(HERE)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def spec(name: str, workload: str = "fft", **kw: object) -> TenantSpec:
    return TenantSpec(name=name, workload=workload, size=16, warmup=1, **kw)  # type: ignore[arg-type]


def test_two_tenants_solo_then_shared_with_barrier_and_keep_running() -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("fast", sleep_ms=0.0), spec("slow", "matmul", sleep_ms=20.0)], "cpu")
        pids = [w.process.pid for w in backend._workers.values()]
        solo = backend.run_phase(PhasePlan("solo", 0, {"fast": 30}), timeout_s=60)
        shared = backend.run_phase(PhasePlan("shared", 0, {"fast": 30, "slow": 10}), 60)
        facts = backend.facts()
    assert wait_dead(pids) == []
    fast_solo = solo.readers["fast"].samples
    assert len(fast_solo) == 30 and {s.phase for s in fast_solo} == {"solo"}
    assert "slow" not in solo.readers
    fast, slow = shared.readers["fast"].samples, shared.readers["slow"].samples
    # Samples past the target are kept; "stop" ends the phase soon after the last target.
    assert 10 <= len(slow) < 40
    # The fast tenant kept running while the slow one still measured: more than its target.
    assert len(fast) > 30
    assert fast[-1].end_ns >= slow[-1].start_ns
    # Both started on the common barrier: their first iterations begin within 50 ms.
    assert abs(fast[0].start_ns - slow[0].start_ns) < 50e6
    assert all(s.host_ms > 0 and s.device_ms != s.device_ms for s in fast)  # CPU: no device clock
    assert facts["tenants"]["fast"]["device"] == "cpu"
    assert facts["tenants"]["fast"]["clock"] == "host"


@pytest.mark.parametrize(
    ("workload", "expect", "oom"),
    [
        ("kts_test_workloads:crash", "simulated worker crash", False),
        ("kts_test_workloads:oom", "CUDA out of memory", True),
        ("kts_test_workloads:die", "exit code 139", False),
    ],
)
def test_failing_worker_ends_phase_with_its_stderr(workload: str, expect: str, oom: bool) -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("good"), spec("bad", workload, params={"after": "5"})], "cpu")
        pids = [w.process.pid for w in backend._workers.values()]
        with pytest.raises(WorkerError) as info:
            backend.run_phase(PhasePlan("shared", 0, {"good": 50, "bad": 50}), timeout_s=60)
    err = info.value
    assert err.tenant == "bad"
    assert expect in str(err)
    assert err.oom is oom
    if workload.endswith(("crash", "oom")):
        assert "Traceback" in err.stderr_tail  # the tail of its stderr travels with the error
    assert wait_dead(pids) == []


def test_hung_worker_is_stopped_after_timeout() -> None:
    backend = LocalBackend(env=ENV)
    started = time.monotonic()
    with backend:
        backend.start([spec("stuck", "kts_test_workloads:hang", params={"after": "3"})], "cpu")
        pids = [w.process.pid for w in backend._workers.values()]
        with pytest.raises(WorkerError, match="hung"):
            backend.run_phase(PhasePlan("solo", 0, {"stuck": 10}), timeout_s=2)
    assert time.monotonic() - started < 60
    assert wait_dead(pids) == []


def test_a_hung_start_is_bounded_by_the_start_timeout() -> None:
    backend = LocalBackend(env=ENV)
    backend.start_timeout_s = 3.0  # the runner sets it from --kts-timeout
    started = time.monotonic()
    with pytest.raises(WorkerError, match=r"did not manage to start .* within 3 s"), backend:
        backend.start([spec("stuck", "kts_test_workloads:hang_build")], "cpu")
    assert time.monotonic() - started < 30


def test_a_reused_process_s_error_shows_only_its_own_tenant_s_stderr() -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("noisy", "kts_test_workloads:noisy")], "cpu")
        backend.run_phase(PhasePlan("solo", 0, {"noisy": 8}), timeout_s=60)
        backend.start([spec("bad", "kts_test_workloads:crash", params={"after": "3"})], "cpu")
        assert backend.startup["tenants"]["bad"]["how"] == "reloaded"
        with pytest.raises(WorkerError) as info:
            backend.run_phase(PhasePlan("solo", 0, {"bad": 10}), timeout_s=60)
    assert "simulated worker crash" in info.value.stderr_tail
    assert "a framework warning that is not ours" not in info.value.stderr_tail


def test_what_a_workload_started_ends_with_its_worker() -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("spawner", "kts_test_workloads:spawner")], "cpu")
        backend.run_phase(PhasePlan("solo", 0, {"spawner": 5}), timeout_s=60)
        tail = backend._workers["spawner"].stderr_tail()
    helper = int(tail.split("helper pid ")[1].split()[0])
    assert wait_dead([helper]) == []


def test_bad_workload_fails_at_start_with_a_clear_message() -> None:
    backend = LocalBackend(env=ENV)
    with pytest.raises(WorkerError, match=r"unknown workload|cannot import"), backend:
        backend.start([spec("x", "no_such_module_xyz:build")], "cpu")


def test_a_workloads_prints_stay_off_the_protocol_stream() -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("noisy", "kts_test_workloads:noisy")], "cpu")
        out = backend.run_phase(PhasePlan("solo", 0, {"noisy": 8}), timeout_s=60)
        tail = backend._workers["noisy"].stderr_tail()
    reader = out.readers["noisy"]
    assert len(reader.samples) == 8
    # Its print() calls went to its stderr: nothing of them is read as a protocol line.
    assert reader.foreign == reader.malformed == reader.misaddressed == 0
    assert "a framework warning that is not ours" in tail and "KTS_APP,v2,broken,line" in tail


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pytest_kts.backends.base import PhasePlan, TenantSpec
    from pytest_kts.backends.local import LocalBackend
    b = LocalBackend()
    b.start([TenantSpec(name="a", workload="fft", size=16, warmup=1),
             TenantSpec(name="b", workload="fft", size=16, warmup=1)], "cpu")
    print("PIDS", *[w.process.pid for w in b._workers.values()], flush=True)
    with b:
        b.run_phase(PhasePlan("shared", 0, {"a": 10**9, "b": 10**9}), timeout_s=600)
    """
)


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_interrupted_parent_leaves_no_worker_behind(how: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line.startswith("PIDS"), parent.stderr.read() if parent.stderr else line
    pids = [int(p) for p in line.split()[1:]]
    time.sleep(1.0)  # in the middle of an endless shared phase
    assert all(alive(p) for p in pids)
    parent.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    parent.wait(timeout=30)
    assert wait_dead(pids, timeout=15) == []


def test_background_tenant_never_lengthens_a_phase_and_a_stop_ends_its_sleep() -> None:
    # The co-tenant sleeps 5 s between iterations; the SLO tenant needs ~20 quick ones.
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("slo", sleep_ms=1.0), spec("bg", "matmul", sleep_ms=5000.0)], "cpu")
        out = backend.run_phase(PhasePlan("shared", 0, {"slo": 20, "bg": 0}), timeout_s=60)
    assert len(out.readers["slo"].samples) >= 20
    assert 1 <= len(out.readers["bg"].samples) <= 2  # it ran as background, then stopped
    assert not out.cut
    # Stopped in its sleep: the phase did not wait for the 5 s period to end.
    assert out.seconds < 4.0


def test_the_time_share_cuts_a_phase_and_keeps_its_samples() -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("a", sleep_ms=20.0), spec("b", "matmul", sleep_ms=20.0)], "cpu")
        out = backend.run_phase(
            PhasePlan("shared", 0, {"a": 10_000, "b": 0}, max_seconds=1.5), timeout_s=60
        )
        solo = backend.run_phase(PhasePlan("solo", 1, {"a": 10_000}, max_seconds=1.0), 60)
        # The next phase is not ended by the stop of the one before (numbered stops).
        after = backend.run_phase(PhasePlan("solo", 2, {"a": 5}), timeout_s=60)
    assert out.cut and solo.cut and not after.cut
    assert 5 <= len(out.readers["a"].samples) < 10_000
    assert 5 <= len(solo.readers["a"].samples) < 10_000
    assert len(after.readers["a"].samples) == 5
    assert out.wall_seconds < 1.5 + 1.0  # the share, plus one iteration to stop


def test_a_pooled_backend_keeps_unchanged_workers_and_reloads_processes_for_new_ones() -> None:
    backend = LocalBackend(env=ENV, spares=1)
    with backend:
        backend.start([spec("a"), spec("b", "matmul")], "cpu")
        pid_a, pid_b = (backend._workers[t].process.pid for t in ("a", "b"))
        # The first start spawned both tenants and a spare beside them, in parallel.
        first = backend.startup
        assert {t: e["how"] for t, e in first["tenants"].items()} == {
            "a": "spawned",
            "b": "spawned",
        }
        assert first["processes"] == 3 and first["spares"] == 1
        assert all(e["import_s"] > 0 and e["interpreter_s"] > 0 for e in first["tenants"].values())
        spare_pid = next(iter(backend._spares.values())).process.pid
        backend.run_phase(PhasePlan("shared", 0, {"a": 5, "b": 5}), timeout_s=60)
        # The next scenario: "a" with another size (same name), "b" unchanged, "c" new.
        changed = TenantSpec(name="a", workload="fft", size=32, warmup=1)
        backend.start([changed, spec("b", "matmul"), spec("c")], "cpu")
        second = backend.startup["tenants"]
        assert {t: e["how"] for t, e in second.items()} == {
            "a": "reloaded",
            "b": "resident",
            "c": "reloaded",
        }
        # No process started: "a" was rebuilt in its own process, "c" took the spare.
        assert backend._workers["a"].process.pid == pid_a
        assert backend._workers["b"].process.pid == pid_b
        assert backend._workers["c"].process.pid == spare_pid
        assert "import_s" not in second["a"] and second["a"]["build_s"] >= 0
        assert backend._workers["a"].meta["size"] == 32
        out = backend.run_phase(PhasePlan("shared", 1, {"a": 5, "b": 5, "c": 5}), 60)
        assert all(len(out.readers[t].samples) >= 5 for t in ("a", "b", "c"))
        assert {s.tenant for s in out.readers["c"].samples} == {"c"}
        # Four new tenants: three take the idle processes, one is spawned, with a spare.
        backend.start([spec(t) for t in ("d", "e", "f", "g")], "cpu")
        hows = sorted(e["how"] for e in backend.startup["tenants"].values())
        assert hows == ["reloaded", "reloaded", "reloaded", "spawned"]
        assert backend.startup["spares"] == 1
        pids = [w.process.pid for w in [*backend._workers.values(), *backend._spares.values()]]
        assert len(set(pids)) == 5 and {pid_a, pid_b, spare_pid} <= set(pids)
    assert wait_dead(pids) == []


@pytest.mark.parametrize(
    ("leaving", "counter"),
    [
        ("kts_test_workloads:leaky", "tensors"),
        ("kts_test_workloads:threaded", "threads"),
        ("kts_test_workloads:clock_patcher", "process_state"),
    ],
)
def test_a_process_that_keeps_something_of_its_tenant_is_retired_not_reused(
    leaving: str, counter: str
) -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("old", leaving), spec("other")], "cpu")
        old_pid = backend._workers["old"].process.pid
        backend.start([spec("new"), spec("other")], "cpu")
        facts = backend.startup
        # "new" was handed the old process first; its release found the leftover, so it
        # runs in a fresh process and the note says what was left.
        assert facts["tenants"]["new"]["how"] == "spawned"
        assert backend._workers["new"].process.pid != old_pid
        assert wait_dead([old_pid]) == []
        assert any(f"{counter} " in n and "'old'" in n for n in facts["notes"])
        out = backend.run_phase(PhasePlan("solo", 0, {"new": 5}), timeout_s=60)
        assert len(out.readers["new"].samples) == 5
        pids = [w.process.pid for w in backend._workers.values()]
    assert wait_dead(pids) == []


def test_a_workload_that_replaces_the_clock_does_not_change_the_harness_s_readings() -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("patcher", "kts_test_workloads:clock_patcher")], "cpu")
        out = backend.run_phase(PhasePlan("solo", 0, {"patcher": 20}), timeout_s=60)
        host_ms = [s.host_ms for s in out.readers["patcher"].samples]
        # Its step is a 4-element sum; read through the patched clock each would be >= 5 ms.
        assert len(host_ms) == 20 and max(host_ms) < 5.0
        pids = [w.process.pid for w in backend._workers.values()]
    assert wait_dead(pids) == []


def test_a_reused_process_gives_the_next_tenant_a_fresh_processs_torch_settings() -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([spec("a", "kts_test_workloads:meddler"), spec("b")], "cpu")
        pid = backend._workers["a"].process.pid
        # expects_defaults raises at build unless threads, dtype and matmul precision are
        # those of a fresh worker: the release put back what meddler changed.
        backend.start([spec("c", "kts_test_workloads:expects_defaults"), spec("b")], "cpu")
        assert backend.startup["tenants"]["c"]["how"] == "reloaded"
        assert backend._workers["c"].process.pid == pid
