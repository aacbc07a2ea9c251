"""Messages that say what happened and what to do (issue 19 item 9)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pytest

from pytest_kts import ConfigError, assert_df, gpulock
from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.local import LocalBackend
from pytest_kts.errors import WorkerError
from pytest_kts.progress import Progress
from pytest_kts.protocol import Sample
from pytest_kts.results import TenantResult
from pytest_kts.samples import group

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(HERE)}


def test_a_hang_names_the_timeout_as_given() -> None:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([TenantSpec("h", "kts_test_workloads:hang", 8, warmup=0)], "cpu")
        with pytest.raises(WorkerError, match=r"within 1\.5 s; it was stopped"):
            backend.run_phase(PhasePlan("solo", 0, {"h": 50}), timeout_s=1.5)


def _tenant(solo: int, shared: int, device: bool = False) -> TenantResult:
    records = [
        Sample("t", phase, 0, i, 1000 * i, 1000 * i + 500, 1.0, 1.0 if device else math.nan)
        for phase, n in (("solo", solo), ("shared", shared))
        for i in range(n)
    ]
    return TenantResult(spec=TenantSpec("t", "fft", 16), samples=group(records, ["t"])["t"])


def test_no_samples_is_said_as_such_not_blamed_on_the_clock() -> None:
    with pytest.raises(ConfigError, match=r"'t' has no samples in its solo phase") as info:
        assert_df(_tenant(0, 50), p=99)
    assert "CUDA" not in str(info.value)
    with pytest.raises(ConfigError, match=r"no samples in its solo or shared phase"):
        assert_df(_tenant(0, 0), p=99, clock="device")
    # Samples without a device clock: that is what the CUDA hint is for.
    with pytest.raises(ConfigError, match="the device clock exists only on CUDA"):
        assert_df(_tenant(50, 50), p=99, clock="device")


def test_a_thread_count_that_is_no_number_is_named_by_the_worker() -> None:
    backend = LocalBackend(env={**ENV, "KTS_CPU_THREADS": "abc"})
    with pytest.raises(WorkerError, match=r"KTS_CPU_THREADS='abc' is not a thread count"), backend:
        backend.start([TenantSpec("f", "fft", 8, warmup=0)], "cpu")


@pytest.mark.parametrize("where", ["/proc/kts", "under_a_file"])
def test_an_unusable_lock_dir_is_one_line(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    folder = "/proc/kts" if where == "/proc/kts" else str(tmp_path / "file" / "locks")
    monkeypatch.setenv("KTS_LOCK_DIR", folder)
    with pytest.raises(ConfigError) as info:
        gpulock.acquire(["cpu"], timeout_s=1)
    message = str(info.value)
    assert message.startswith(f"KTS_LOCK_DIR {folder}: cannot hold lock files there")
    assert "set KTS_LOCK_DIR to a folder" in message and len(message.splitlines()) == 1


def test_a_wait_for_the_lock_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTS_LOCK_DIR", str(tmp_path / "locks"))
    notes: list[str] = []
    # Another scenario holds the CPU.
    with gpulock.acquire(["cpu"]), pytest.raises(gpulock.GpuBusyError):
        gpulock.acquire(
            ["cpu"], timeout_s=1.0, poll_s=0.05, notice_after_s=0.1, on_wait=notes.append
        )
    assert len(notes) == 1
    assert notes[0].startswith("waiting ")
    assert f"for the CPU: another pytest-kts scenario is using it (pid {os.getpid()})" in notes[0]
    assert "s more" in notes[0]
    for verbosity, shown in ((0, True), (-1, True), (-2, False)):  # -q shows it, -qq not
        out = io.StringIO()
        Progress(out, verbosity, label="t::x").note(notes[0])
        assert out.getvalue() == (f"kts t::x: {notes[0]}\n" if shown else "")


CONFTEST_FULL_DISK = """
from pytest_kts import safefile

_real = safefile.write_text


def _full(path, text, encoding="utf-8"):
    if str(path).endswith("summary.json"):
        raise OSError(28, "No space left on device")
    _real(path, text, encoding)


safefile.write_text = _full
"""

SCENARIO = """
def test_x(kts):
    kts.tenant("fft", size=16, sleep_ms=0.2, warmup=1)
    kts.tenant("matmul", size=16, sleep_ms=0.2, warmup=1)
    kts.run()
"""


def test_a_report_that_cannot_be_written_fails_the_run_and_keeps_the_old_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("KTS_")]:
        monkeypatch.delenv(key)
    pytester.makepyfile(test_x=SCENARIO)
    args = ["--kts-device", "cpu", "--kts-iterations", "20", "--kts-round-iterations", "20"]
    first = pytester.runpytest_subprocess(*args, "--kts-report", "r")
    assert first.ret == 0
    before = {p: p.read_bytes() for p in (pytester.path / "r").rglob("*") if p.is_file()}
    pytester.makeconftest(CONFTEST_FULL_DISK)
    second = pytester.runpytest_subprocess(*args, "--kts-report", "r")
    second.assert_outcomes(passed=1)
    assert second.ret == pytest.ExitCode.TESTS_FAILED
    second.stdout.fnmatch_lines(
        ["kts: could not write the report to r: *No space left on device*; the previous report*"]
    )
    after = {p: p.read_bytes() for p in (pytester.path / "r").rglob("*") if p.is_file()}
    assert after == before
