"""The streams backend with a real worker process on the CPU: every tenant a thread of one process.

On the CPU there are no streams (the meta says ``"streams": false``) but everything else is the
mode's own: one process, commands addressed per tenant, lines routed back by tenant name,
failures and cleanup as the local backend's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.streams import StreamsBackend
from pytest_kts.errors import ConfigError, WorkerError

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(HERE)}
CHATTY_LINE = "chatty workload says hello, in two writes"


def chatty(device: Any, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Prints a foreign line per step, in two writes, as a framework's warning might.

    The worker imports it as ``test_streams_backend:chatty`` (torch only there: importing it
    here would slow the test session for nothing).
    """
    import torch

    x = torch.randn(size, size, device=device)
    head, tail = CHATTY_LINE[:10], CHATTY_LINE[10:]

    def step() -> object:
        print(head, end="")
        print(tail)
        return x @ x

    return step


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead for our purposes
    except OSError:
        return False


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def spec(name: str, workload: str = "fft", **kw: object) -> TenantSpec:
    return TenantSpec(name=name, workload=workload, size=16, warmup=1, **kw)  # type: ignore[arg-type]


def pid_of(backend: StreamsBackend) -> int:
    assert backend._process is not None
    return backend._process.pid


def test_solo_runs_only_its_tenant_and_shared_runs_all_together() -> None:
    backend = StreamsBackend(env=ENV, priorities={"slow": -1}, switch_interval_ms=1.0)
    with backend:
        backend.start([spec("fast"), spec("slow", "matmul", sleep_ms=20.0)], "cpu")
        pid = pid_of(backend)
        solo = backend.run_phase(PhasePlan("solo", 0, {"fast": 30}), timeout_s=60)
        # The idle tenant printed nothing at all: its thread never ran a phase.
        assert backend._samples_seen["slow"] == 0
        shared = backend.run_phase(PhasePlan("shared", 0, {"fast": 30, "slow": 10}), 60)
        facts = backend.facts()
    assert wait_dead(pid)
    assert list(solo.readers) == ["fast"]
    assert len(solo.readers["fast"].samples) == 30
    assert {s.phase for s in solo.readers["fast"].samples} == {"solo"}
    fast, slow = shared.readers["fast"].samples, shared.readers["slow"].samples
    assert len(fast) >= 30 and 10 <= len(slow) < 40
    assert {s.phase for s in fast + slow} == {"shared"}
    # Together in time: the fast tenant ran all through the slow one's iterations, not before.
    during = [s for s in fast if slow[0].start_ns <= s.start_ns <= slow[-1].end_ns]
    assert len(during) >= 10
    assert abs(fast[0].start_ns - slow[0].start_ns) < 50e6  # the common barrier
    assert all(r.malformed == 0 and r.foreign == 0 for r in shared.readers.values())
    metas = facts["tenants"]
    assert facts["sharing"] == "streams" and facts["backend"] == "streams"
    assert metas["fast"]["pid"] == metas["slow"]["pid"] == pid  # one process for all
    assert metas["slow"]["streams"] is False  # the CPU: threads, no streams
    assert metas["slow"]["priority_requested"] == -1 and metas["fast"]["priority_requested"] == 0
    assert metas["fast"]["switch_interval_ms"] == pytest.approx(1.0)


def test_lines_stay_whole_under_load_and_stray_prints_go_tagged_to_stderr() -> None:
    tenants = [
        spec("f1", sleep_ms=0.0),
        spec("f2", sleep_ms=0.0),
        spec("c1", "test_streams_backend:chatty"),
        spec("c2", "test_streams_backend:chatty"),
    ]
    backend = StreamsBackend(env=ENV)
    with backend:
        backend.start(tenants, "cpu")
        plan = PhasePlan("shared", 0, {"f1": 3000, "f2": 3000, "c1": 1500, "c2": 1500})
        out = backend.run_phase(plan, timeout_s=60)
        unrouted = backend.unrouted
        tail = backend._workers["c1"].stderr_tail().splitlines()
    for name, reader in out.readers.items():
        assert reader.malformed == 0, (name, reader.malformed_examples)
        # No print reaches the protocol stream: only the harness writes it.
        assert reader.foreign == reader.misaddressed == 0
        assert len(reader.samples) >= plan.iterations[name]
    # Each print came out on stderr as one whole line, tagged with the tenant that printed it.
    assert tail and set(tail) <= {f"[c1] {CHATTY_LINE}", f"[c2] {CHATTY_LINE}"}
    assert unrouted.lines == 0


@pytest.mark.parametrize(
    ("workload", "expect", "oom"),
    [
        ("kts_test_workloads:crash", "simulated worker crash", False),
        ("kts_test_workloads:oom", "CUDA out of memory", True),
        ("kts_test_workloads:die", "exit code 139", False),
    ],
)
def test_failing_tenant_ends_the_phase_naming_it(workload: str, expect: str, oom: bool) -> None:
    backend = StreamsBackend(env=ENV)
    with backend:
        backend.start([spec("good"), spec("bad", workload, params={"after": "5"})], "cpu")
        pid = pid_of(backend)
        with pytest.raises(WorkerError) as info:
            backend.run_phase(PhasePlan("shared", 0, {"good": 50, "bad": 50}), timeout_s=60)
    err = info.value
    assert expect in str(err)
    assert err.oom is oom
    if workload.endswith("die"):
        # A silent death cannot be pinned on one thread: the error says all went with it.
        assert "one process held every tenant" in str(err)
    else:
        assert err.tenant == "bad"
        assert "Traceback" in err.stderr_tail and "tenant 'bad' failed" in err.stderr_tail
    assert wait_dead(pid)


def test_hung_tenant_is_named_and_the_process_stopped() -> None:
    backend = StreamsBackend(env=ENV)
    started = time.monotonic()
    with backend:
        tenants = [spec("busy"), spec("stuck", "kts_test_workloads:hang", params={"after": "3"})]
        backend.start(tenants, "cpu")
        pid = pid_of(backend)
        with pytest.raises(WorkerError, match="hung") as info:
            backend.run_phase(PhasePlan("shared", 0, {"busy": 20, "stuck": 10}), timeout_s=2)
    # "busy" reached its target and kept running; the one short of its target is to blame.
    assert info.value.tenant == "stuck"
    assert wait_dead(pid)
    assert time.monotonic() - started < 40


def test_bad_workload_fails_at_start_naming_the_tenant() -> None:
    backend = StreamsBackend(env=ENV)
    with pytest.raises(WorkerError, match=r"unknown workload|cannot import") as info, backend:
        backend.start([spec("ok"), spec("x", "no_such_module_xyz:build")], "cpu")
    assert info.value.tenant == "x"
    assert backend._process is not None and wait_dead(backend._process.pid)


def test_settings_that_cannot_work_are_refused_before_any_process() -> None:
    with pytest.raises(ConfigError, match="declare"):
        StreamsBackend(priorities={"ghost": -1}).start([spec("a"), spec("b")], "cpu")
    with pytest.raises(ConfigError, match="integer"):
        StreamsBackend(priorities={"a": 1.5})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="switch_interval_ms"):
        StreamsBackend(switch_interval_ms=0)
    clash = [spec("a", env={"OMP_NUM_THREADS": "1"}), spec("b", env={"OMP_NUM_THREADS": "2"})]
    backend = StreamsBackend()
    with pytest.raises(ConfigError, match="one process"):
        backend.start(clash, "cpu")
    assert backend._process is None


def test_worker_cli_refuses_bad_arguments() -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest_kts.workers.streams", *argv],
            capture_output=True, text=True, timeout=60, cwd=HERE.parent,
        )  # fmt: skip

    one = json.dumps({"name": "a", "workload": "fft"})
    assert "--serve" in run("--tenant-json", one).stderr
    dup = json.dumps([{"name": "a", "workload": "fft"}, {"name": "a", "workload": "fft"}])
    assert "unique" in run("--serve", "--tenant-json", dup).stderr
    bad = run("--serve", "--tenant-json", json.dumps({"name": "a", "workload": "fft", "x": 1}))
    assert bad.returncode == 2 and "unknown keys" in bad.stderr


SCRIPT = textwrap.dedent(
    """
    from pytest_kts.backends.base import PhasePlan, TenantSpec
    from pytest_kts.backends.streams import StreamsBackend
    b = StreamsBackend()
    b.start([TenantSpec(name="a", workload="fft", size=16, warmup=1),
             TenantSpec(name="b", workload="fft", size=16, warmup=1)], "cpu")
    print("PID", b._process.pid, flush=True)
    with b:
        b.run_phase(PhasePlan("shared", 0, {"a": 10**9, "b": 10**9}), timeout_s=600)
    """
)


def test_interrupted_parent_leaves_no_worker_behind() -> None:
    # Both ways at once, to pay for the workers' start (importing torch) only once.
    parents = {
        how: subprocess.Popen(
            [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for how in (signal.SIGINT, signal.SIGKILL)
    }  # fmt: skip
    pids = {}
    for how, parent in parents.items():
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.startswith("PID"), parent.stderr.read() if parent.stderr else line
        pids[how] = int(line.split()[1])
    time.sleep(1.0)  # in the middle of an endless shared phase
    assert all(alive(pid) for pid in pids.values())
    for how, parent in parents.items():
        parent.send_signal(how)  # Ctrl-C: the backend's close(); SIGKILL: the worker's own watch
    for how, parent in parents.items():
        parent.wait(timeout=30)
        assert wait_dead(pids[how], timeout=15), how.name


def test_a_pooled_streams_process_takes_the_next_scenarios_tenants() -> None:
    backend = StreamsBackend(env=ENV)
    with backend:
        backend.start([spec("a"), spec("b", "matmul")], "cpu")
        pid = pid_of(backend)
        assert {e["how"] for e in backend.startup["tenants"].values()} == {"spawned"}
        assert backend.startup["tenants"]["a"]["import_s"] > 0
        backend.run_phase(PhasePlan("shared", 0, {"a": 5, "b": 5}), timeout_s=60)
        # Other tenants: loaded into the same process, which released the old ones.
        backend.start([spec("c", "matmul"), spec("d", sleep_ms=1.0)], "cpu")
        assert pid_of(backend) == pid
        assert {e["how"] for e in backend.startup["tenants"].values()} == {"reloaded"}
        assert "import_s" not in backend.startup["tenants"]["c"]
        out = backend.run_phase(PhasePlan("shared", 1, {"c": 5, "d": 5}), timeout_s=60)
        assert all(len(out.readers[t].samples) >= 5 for t in ("c", "d"))
        assert {s.tenant for s in out.readers["d"].samples} == {"d"}
        assert set(backend.facts()["tenants"]) == {"c", "d"}
        # The same tenants again: nothing to do.
        backend.start([spec("c", "matmul"), spec("d", sleep_ms=1.0)], "cpu")
        assert {e["how"] for e in backend.startup["tenants"].values()} == {"resident"}
        # Another environment for the one process: a fresh process.
        backend.start([spec("e", env={"KTS_TEST_SIDE": "1"}), spec("f")], "cpu")
        assert pid_of(backend) != pid and wait_dead(pid)
        new_pid = pid_of(backend)
        # A tenant that keeps a tensor out of reach: the next load finds it and starts afresh.
        side = {"KTS_TEST_SIDE": "1"}
        backend.start([spec("g", "kts_test_workloads:leaky", env=side), spec("h")], "cpu")
        assert pid_of(backend) == new_pid
        backend.start([spec("i", env=side), spec("j")], "cpu")
        assert pid_of(backend) != new_pid and wait_dead(new_pid)
        assert {e["how"] for e in backend.startup["tenants"].values()} == {"spawned"}
        assert any("tensors " in n for n in backend.startup["notes"])
        out = backend.run_phase(PhasePlan("shared", 2, {"i": 5, "j": 5}), timeout_s=60)
        assert all(len(out.readers[t].samples) >= 5 for t in ("i", "j"))
        last = pid_of(backend)
    assert wait_dead(last)


def slow_build(device: Any, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Takes 0.4 s to build and writes when it did to ``params["log"]`` (one line per build)."""
    began = time.time()
    time.sleep(0.4)
    with open(params["log"], "a") as f:
        f.write(f"{began} {time.time()}\n")
    return lambda: None


def test_tenants_build_one_at_a_time(tmp_path: Path) -> None:
    # A CUDA graph capture that overlaps another thread's build can fail outright (an H100
    # decode built beside a prefill: cudaErrorIllegalState), so the tenants of one process
    # build in turn. Two tenants that each take 0.4 s to build: their builds do not overlap,
    # and the one that waited says so in its start-up record.
    log = tmp_path / "builds.txt"
    backend = StreamsBackend(env=ENV)
    with backend:
        backend.start(
            [
                spec(n, "test_streams_backend:slow_build", params={"log": str(log)})
                for n in ("a", "b")
            ],
            "cpu",
        )
        waits = [float(e.get("build_wait_s", 0.0)) for e in backend.startup["tenants"].values()]
    (_, first_end), (second_start, _) = sorted(
        tuple(map(float, line.split())) for line in log.read_text().splitlines()
    )
    assert second_start >= first_end - 0.01, "the second build began before the first had ended"
    assert max(waits) >= 0.3 and min(waits) < 0.1
