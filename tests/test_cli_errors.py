"""The kts command on hostile input (issue 19 item 6): exit 2 and one line for every bad input,
never a traceback; exit 1 only for a verdict; a report write that fails leaves the previous
report whole."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pytest_kts import report
from pytest_kts.protocol import Sample, format_sample
from pytest_kts.samples import CSV_COLUMNS
from tests.test_cli import DATA, assert_one_line_error, run

HEADER = ",".join(CSV_COLUMNS)


def _v2_log(path: Path, n: int = 200, extra: tuple[str, ...] = ()) -> Path:
    rng = np.random.default_rng(3)
    lines = list(extra)
    t = 1_700_000_000_000_000_000
    for phase in ("solo", "shared"):
        for tenant in ("fft", "gemm"):
            for i, ms in enumerate(rng.lognormal(0, 0.2, n)):
                start = t + i * 5_000_000
                end = start + int(ms * 1e6)
                lines.append(format_sample(Sample(tenant, phase, 0, i, start, end, ms, math.nan)))
            t += n * 5_000_000
    path.write_text("\n".join(lines) + "\n")
    return path


HUGE = [
    f"KTS_APP,v2,fft,solo,0,1,{10**30},{10**30 + 5},1.000000,-",
    f"KTS_APP,v2,fft,solo,{10**30},1,100,200,1.000000,-",
    f"KTS_APP,v2,fft,solo,0,{10**25},100,200,1.000000,-",
    "KTS_APP,v2,fft,solo,0,1,100,200," + "9" * 400 + ".000000,-",
    f"KTS_APP,v1,FFT,1,{10**30},{10**30 + 5},1.000000,solo",
    "KTS_APP,v1,FFT,1,100,200," + "9" * 400 + ".000000,solo",
]


def test_integers_beyond_64_bits_are_malformed_lines_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _v2_log(tmp_path / "run.log", extra=tuple(HUGE))
    code, out, err = run(capsys, "report", str(log), "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert f"800 samples, 0 foreign, {len(HUGE)} malformed" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["scenarios"][0]["tenants"]["fft"]["lines"]["samples"] == 400


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e308", "-1.0", "1e10"])
def test_a_samples_csv_with_absurd_latencies_keeps_only_its_good_rows(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [HEADER]
    for phase in ("solo", "shared"):
        for k in range(50):
            ms = value if (phase, k) == ("shared", 7) else f"{1 + k / 100:.6f}"
            rows.append(f"fft,{phase},0,{k},{k * 10**7},{k * 10**7 + 10**6},{ms},")
            rows.append(f"gemm,{phase},0,{k},{k * 10**7},{k * 10**7 + 10**6},2.000000,")
    csv = tmp_path / "scenario.csv"
    csv.write_text("\n".join(rows) + "\n")
    code, out, err = run(capsys, "report", str(csv), "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "199 samples, 0 foreign, 1 malformed" in out
    assert (tmp_path / "r" / "results.md").is_file()


def test_an_unrecognised_csv_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "prices.csv"
    other.write_text("date,price\n2026-01-01,3\n")
    code, out, err = run(capsys, "report", str(other), "--out", str(tmp_path / "r"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "nothing to report", "prices.csv (a CSV, but not a samples CSV)")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["under_a_file", "proc", "a_file"])
def test_an_unwritable_out_is_refused_before_anything_is_read_or_run(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    out_dir = {
        "under_a_file": tmp_path / "file" / "report",
        "proc": Path("/proc/kts-report"),
        "a_file": tmp_path / "file",
    }[kind]
    code, out, err = run(capsys, "report", str(DATA), "--out", str(out_dir))
    assert code == 2 and out == ""
    assert_one_line_error(err, f"--out {out_dir}: cannot write there")
    code, out, err = run(
        capsys, "run", "--tenant", "fft", "--tenant", "matmul", "--report", str(out_dir)
    )
    assert code == 2 and out == ""
    assert_one_line_error(err, f"--report {out_dir}: cannot write there")


@pytest.mark.parametrize("kind", ["a_folder", "under_a_file", "proc"])
def test_an_unwritable_benchmark_json_is_refused_first(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    target = {
        "a_folder": tmp_path,
        "under_a_file": tmp_path / "file" / "b.json",
        "proc": Path("/proc/kts/b.json"),
    }[kind]
    code, out, err = run(capsys, "report", str(DATA), "--benchmark-json", str(target))
    assert code == 2 and out == ""
    assert_one_line_error(err, f"--benchmark-json {target}: cannot write there")


def test_a_report_write_that_fails_late_exits_2_and_leaves_the_old_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "r"
    assert run(capsys, "report", str(DATA), "--out", str(out_dir))[0] == 0
    before = {p: p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    real = report.safefile.write_text

    def fail_late(path: object, text: str, encoding: str = "utf-8") -> None:
        if str(path).endswith("results.md"):
            raise OSError(28, "No space left on device")
        real(path, text, encoding)  # type: ignore[arg-type]

    monkeypatch.setattr(report.safefile, "write_text", fail_late)
    code, _, err = run(capsys, "report", str(DATA), "--out", str(out_dir), "--name", "other")
    assert code == 2
    assert_one_line_error(
        err, "--out", "No space left on device", "previous report there is unchanged"
    )
    assert {p: p.read_bytes() for p in out_dir.rglob("*") if p.is_file()} == before


def test_two_csvs_of_one_name_keep_their_own_report_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        log = _v2_log(tmp_path / where / "x.log", n=60)
        code, _, err = run(capsys, "report", str(log), "--out", str(tmp_path / where / "r"))
        assert code == 0, err
        (tmp_path / where / "r" / "samples").rename(tmp_path / where / "samples")
    code, _, err = run(
        capsys, "report", str(tmp_path / "a" / "samples"), str(tmp_path / "b" / "samples"),
        "--out", str(tmp_path / "both"),
    )  # fmt: skip
    assert code == 0, err
    assert len(list((tmp_path / "both" / "samples").glob("*.csv"))) == 2


def test_benchmark_json_into_a_fifo_a_link_or_a_device_writes_into_it_and_leaves_it_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import stat
    import threading

    # A FIFO: its reader gets the JSON, and the FIFO is still a FIFO afterwards.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    code, _, err = run(capsys, "report", str(DATA), "--benchmark-json", str(fifo))
    reader.join(timeout=30)
    assert code in (0, 1), err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(got[0])[0]["unit"]
    # A link (as /dev/stdout is one): its target is written, the link stays a link.
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    code, _, err = run(capsys, "report", str(DATA), "--benchmark-json", str(link))
    assert code in (0, 1), err
    assert link.is_symlink() and json.loads(target.read_text())[0]["unit"]
    # /dev/null stays the device it is.
    code, _, err = run(capsys, "report", str(DATA), "--benchmark-json", "/dev/null")
    assert code in (0, 1), err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_benchmark_json_to_a_full_device_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    code, _, err = run(capsys, "report", str(DATA), "--benchmark-json", "/dev/full")
    assert code == 2
    assert_one_line_error(err, "--benchmark-json /dev/full: not written")
    assert Path("/dev/full").is_char_device()
