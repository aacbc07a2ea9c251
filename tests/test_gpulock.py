"""One scenario per GPU across processes: the file lock behind pytest-xdist safety."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_kts import gpulock


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KTS_LOCK_DIR", str(tmp_path))
    return tmp_path


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pytest_kts import gpulock
    lease = gpulock.acquire(sys.argv[1:], timeout_s=5)
    print(lease.uuid, flush=True)
    time.sleep(30)
    """
)


def hold(*uuids: str) -> tuple[subprocess.Popen[str], str]:
    """Another process (as an xdist worker would be) holding one GPU."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *uuids], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_a_busy_gpu_is_skipped_for_a_free_one() -> None:
    proc, held = hold("GPU-a", "GPU-b")
    try:
        assert held == "GPU-a"
        with gpulock.acquire(["GPU-a", "GPU-b"], timeout_s=5) as lease:
            assert (lease.index, lease.uuid) == (1, "GPU-b")
    finally:
        proc.kill()
        proc.wait()


def test_all_busy_waits_then_refuses_clearly() -> None:
    proc, held = hold("GPU-a")
    try:
        assert held == "GPU-a"
        started = time.monotonic()
        with pytest.raises(gpulock.GpuBusyError, match="stayed busy"):
            gpulock.acquire(["GPU-a"], timeout_s=1.0, poll_s=0.1)
        assert 0.9 < time.monotonic() - started < 5
    finally:
        proc.kill()
        proc.wait()
    # The holder died: its lock went with it (flock), so the GPU is free again.
    with gpulock.acquire(["GPU-a"], timeout_s=5) as lease:
        assert lease.uuid == "GPU-a"


def test_release_frees_the_gpu_and_prefer_spreads_workers() -> None:
    lease = gpulock.acquire(["GPU-a", "GPU-b", "GPU-c"], prefer=2, timeout_s=1)
    assert lease.uuid == "GPU-c"
    lease.release()
    again = gpulock.acquire(["GPU-a", "GPU-b", "GPU-c"], prefer=2, timeout_s=1)
    assert again.uuid == "GPU-c"
    again.release()
    with pytest.raises(gpulock.GpuBusyError, match="empty"):
        gpulock.acquire([], timeout_s=1)
