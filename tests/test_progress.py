from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from _pytest._io import TerminalWriter

from pytest_kts.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_through(progress: Progress, clock: FakeClock) -> None:
    progress.phase_started("solo", 0, ["fft"])
    for n in range(1, 6):
        clock.now += 1.0
        progress.samples("fft", "solo", n * 100)
    progress.phase_started("shared", 0, ["fft", "matmul"])
    clock.now += 1.0
    progress.samples("fft", "shared", 120)
    progress.samples("matmul", "shared", 80)
    progress.estimate("fft", 1.68, (1.42, 2.22))
    progress.finished()


def test_plain_stream_prints_phase_lines_and_throttled_status() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = Progress(out, 0, label="fft+gemm", every_s=2.5, clock=clock)
    run_through(progress, clock)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "kts fft+gemm: solo round 0: fft"
    assert "kts fft+gemm: shared round 0: fft, matmul" in lines
    # Five sample calls one second apart, every_s 2.5: a status line at most every 2.5 s.
    status = [line for line in lines if "samples" in line]
    assert 1 <= len(status) <= 3
    assert status[0] == "kts fft+gemm: solo round 0 | fft 300 samples"  # t=3 s


def test_verbose_plain_stream_prints_each_estimate() -> None:
    out, clock = io.StringIO(), FakeClock()
    run_through(Progress(out, 1, clock=clock), clock)
    assert "kts: DF fft 1.68 [1.42, 2.22]" in out.getvalue().splitlines()


def test_tty_rewrites_one_line_and_clears_it_when_finished() -> None:
    out, clock = TtyStream(), FakeClock()
    progress = Progress(out, 0, label="s", clock=clock)
    progress.phase_started("shared", 2, ["fft", "matmul"])
    clock.now += 1.0
    progress.samples("fft", "shared", 120)
    clock.now += 1.0
    progress.estimate("fft", 1.5, (1.2, 1.9))
    text = out.getvalue()
    assert "\n" not in text
    assert text.count("\r") == 3
    last = text.split("\r")[-1]
    assert last.startswith(
        "kts s: shared round 2 | fft 120 matmul 0 samples | DF fft 1.50 [1.20, 1.90]"
    )
    progress.finished()
    assert out.getvalue().endswith("\r" + " " * len(last.rstrip()) + "\r")


def test_tty_updates_are_throttled() -> None:
    out, clock = TtyStream(), FakeClock()
    progress = Progress(out, 0, refresh_s=0.5, clock=clock)
    progress.phase_started("solo", 0, ["fft"])
    for n in range(50):  # 50 calls within 0.1 s: no new frame
        clock.now += 0.002
        progress.samples("fft", "solo", n)
    assert out.getvalue().count("\r") == 1


def test_quiet_is_silent() -> None:
    for out in (io.StringIO(), TtyStream()):
        clock = FakeClock()
        run_through(Progress(out, -1, clock=clock), clock)
        assert out.getvalue() == ""


def test_terminalwriter_tty_status_below_pytests_line_then_back() -> None:
    file = TtyStream()
    tw = TerminalWriter(file)
    tw.write("tests/test_gpu.py::test_fft ")
    clock = FakeClock()
    progress = Progress(tw, 0, clock=clock)
    assert progress.tty
    progress.phase_started("solo", 0, ["fft"])
    progress.finished()
    text = file.getvalue()
    assert text.startswith("tests/test_gpu.py::test_fft \n\rkts: solo round 0")
    # Cleared, then one line up and 28 columns right: where pytest left its cursor.
    assert text.endswith("\r\x1b[1A\x1b[28C")
    # pytest aligns "[100%]" by what it believes is on the line: that is still its own text.
    assert tw.width_of_current_line == len("tests/test_gpu.py::test_fft ")


def test_terminalwriter_in_a_log_continues_on_a_new_line() -> None:
    file = io.StringIO()
    tw = TerminalWriter(file)
    tw.write("tests/test_gpu.py ")
    clock = FakeClock()
    progress = Progress(tw, 0, clock=clock)
    assert not progress.tty
    progress.phase_started("shared", 1, ["fft", "gemm"])
    progress.finished()
    assert file.getvalue() == "tests/test_gpu.py \nkts: shared round 1: fft, gemm\n"
    assert tw.width_of_current_line == 0


def test_df_without_interval_and_nan() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = Progress(out, 1, clock=clock)
    progress.phase_started("shared", 1, ["a"])
    progress.estimate("a", float("nan"), None)
    progress.estimate("a", 2.0, None)
    lines = out.getvalue().splitlines()
    assert lines[-2:] == ["kts: DF a n/a", "kts: DF a 2.00"]


def test_status_line_on_a_real_terminal_under_default_capture(tmp_path: Path) -> None:
    """pytest in a pseudo-terminal, capture on (no -s): the status line is drawn in place."""
    (tmp_path / "test_p.py").write_text(
        "def test_x(kts):\n"
        "    kts.tenant('fft', size=16, sleep_ms=0.2, warmup=1)\n"
        "    kts.tenant('matmul', size=16, sleep_ms=0.2, warmup=1)\n"
        "    kts.run()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["KTS_LOCK_DIR"] = str(tmp_path / "locks")
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "test_p.py", "-p", "no:cacheprovider",
         "--kts-device", "cpu", "--kts-iterations", "40", "--kts-round-iterations", "20"],
        cwd=tmp_path, env=env, stdout=child, stderr=child, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(main)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out
    # Rewritten in place (carriage returns), with sample counts: the TTY status line.
    assert re.search(r"\rkts: (solo|shared) round 0 \| .*samples", out), out
