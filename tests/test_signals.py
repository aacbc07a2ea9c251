"""SIGTERM ends a run like Ctrl-C (one line, no worker, no temp file, no Job left); SIGKILL of
pytest leaves no worker either (the workers' parent-death signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_kts import signals

ROOT = Path(__file__).resolve().parents[1]

LONG_SCENARIO = """
import pytest

@pytest.mark.kts(iterations=1_000_000, round_iterations=1_000_000, timeout=600)
def test_long(kts):
    kts.tenant("fft", size=16, sleep_ms=5, warmup=1)
    kts.tenant("matmul", size=16, sleep_ms=5, warmup=1)
    kts.run()
"""


def _children_of(pid: int) -> list[int]:
    """Worker processes started by ``pid`` (they carry KTS_PARENT_PID in their environment)."""
    found = []
    mark = f"KTS_PARENT_PID={pid}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if mark in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TMPDIR"] = str(tmp)
    return env


def _start(argv: list[str], tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=tmp,
        env=_env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _running_workers(process: subprocess.Popen[str]) -> list[int]:
    assert _wait_for(lambda: len(_children_of(process.pid)) >= 2 or process.poll() is not None, 120)
    workers = _children_of(process.pid)
    if process.poll() is not None or len(workers) < 2:
        out = process.communicate()[0]
        pytest.fail(f"the run ended before its workers started:\n{out[-3000:]}")
    time.sleep(1.0)  # let them get into their phase
    return workers


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "test_long.py").write_text(LONG_SCENARIO)
    return tmp_path


# --------------------------------------------------------------------------- the handler


def test_sigterm_raises_terminated_once_then_restores() -> None:
    restore = signals.install()
    try:
        with pytest.raises(signals.Terminated, match="terminated by SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode; never reached
        assert isinstance(signals.Terminated(), KeyboardInterrupt)  # every Ctrl-C path applies
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_existing_handler_or_another_thread_is_left_alone() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        signals.install()()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    results: list[Callable[[], None]] = []
    thread = threading.Thread(target=lambda: results.append(signals.install()))
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# --------------------------------------------------------------------------- real runs


def test_sigterm_to_pytest_cleans_up_like_ctrl_c(scratch: Path) -> None:
    process = _start(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kts-device", "cpu", "-q"],
        scratch,
    )
    workers = _running_workers(process)
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=60)[0]
    assert process.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    assert signals.MESSAGE in out
    assert _wait_for(lambda: _alive(workers) == [], 10), "workers outlived pytest"
    assert sorted(p.name for p in scratch.glob("kts-*")) == []  # no stderr temp file


def test_sigterm_to_kts_run_cleans_up(scratch: Path) -> None:
    process = _start(
        [
            sys.executable, "-c", "import sys; from pytest_kts.cli import main; sys.exit(main())",
            "run", "--device", "cpu", "-q", "--iterations", "1000000", "--timeout", "600",
            "--tenant", "fft:size=16,sleep_ms=5,warmup=1",
            "--tenant", "matmul:size=16,sleep_ms=5,warmup=1",
        ],
        scratch,
    )  # fmt: skip
    workers = _running_workers(process)
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=60)[0]
    assert process.returncode == 143, out[-3000:]
    assert f"kts run: {signals.MESSAGE}" in out
    assert _wait_for(lambda: _alive(workers) == [], 10), "workers outlived kts"
    assert sorted(p.name for p in scratch.glob("kts-*")) == []


def test_sigkill_of_pytest_leaves_no_worker(scratch: Path) -> None:
    process = _start(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kts-device", "cpu", "-q"],
        scratch,
    )
    workers = _running_workers(process)
    process.kill()
    process.communicate(timeout=30)
    # Each worker set PR_SET_PDEATHSIG: the kernel ends it with its parent.
    assert _wait_for(lambda: _alive(workers) == [], 15), "workers outlived a killed pytest"
    assert sorted(p.name for p in scratch.glob("kts-*")) == []


def _child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _xdist_run(scratch: Path) -> tuple[subprocess.Popen[str], list[int], list[int]]:
    """pytest -n 1 on the endless scenario: (controller, its xdist worker, kts workers)."""
    pytest.importorskip("xdist")
    process = _start(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kts-device", "cpu", "-q",
         "-n", "1"],
        scratch,
    )  # fmt: skip

    def kts_workers() -> list[int]:
        return [w for x in _child_pids(process.pid) for w in _children_of(x)]

    assert _wait_for(lambda: len(kts_workers()) >= 2 or process.poll() is not None, 120)
    if process.poll() is not None:
        pytest.fail(f"the run ended early:\n{process.communicate()[0][-3000:]}")
    time.sleep(1.0)
    xdist_workers = [x for x in _child_pids(process.pid) if _children_of(x)]
    return process, xdist_workers, kts_workers()


def test_sigterm_to_an_xdist_controller_stops_its_workers_and_their_tenants(
    scratch: Path,
) -> None:
    process, xdist_workers, workers = _xdist_run(scratch)
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=60)[0]
    assert process.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    assert _wait_for(lambda: _alive(xdist_workers + workers) == [], 15), out[-3000:]


def test_an_xdist_worker_whose_controller_was_killed_ends_with_its_tenants(scratch: Path) -> None:
    process, xdist_workers, workers = _xdist_run(scratch)
    process.kill()
    process.communicate(timeout=30)
    # Its channel closed, each xdist worker ends, and its tenants with it (PR_SET_PDEATHSIG).
    assert _wait_for(lambda: _alive(xdist_workers + workers) == [], 20)
