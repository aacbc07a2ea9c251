from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dfs import make_df

from pytest_kts import cli
from pytest_kts.backends.base import TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.protocol import Sample, format_meta, format_sample
from pytest_kts.results import CheckOutcome, ScenarioResult, TenantResult
from pytest_kts.samples import group

DATA = Path(__file__).parent / "data" / "study_v1"
sys.path.insert(0, str(DATA))
import make_logs  # noqa: E402  (the generator of the committed v1 logs)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# -- kts report on the original study's v1 logs ----------------------------------------------------


def test_committed_logs_match_their_generator(tmp_path: Path) -> None:
    for path in make_logs.write_logs(tmp_path):
        assert path.read_text() == (DATA / path.name).read_text()


def test_report_v1_logs_counts_garbage_and_explains_the_clock(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "report", str(DATA))
    assert code == 0 and err == ""
    m = make_logs
    assert "read 2 file(s), " in out
    assert f"{m.SAMPLES} samples, {m.FOREIGN} foreign, {m.MALFORMED} malformed" in out
    assert out.count("  malformed: ") == m.MALFORMED
    assert "launch to observed completion" in out
    assert f"({m.SAMPLES} in the study's v1 format)" in out
    assert "1 sample line(s) end before they start: time.time_ns() went backwards" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("fft ", "gemm "))]
    # Both clocks: the host clock is end - start of the study's epoch stamps.
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (t, phase, clock)
        for t in ("fft", "gemm")
        for clock in ("host", "device")
        for phase in ("solo", "shared")
    ]
    for fft_shared in (rows[1], rows[3]):
        assert 1.4 < float(fft_shared[10]) < 1.9  # the study's FFT DF of about 1.66


def test_report_slo_failed_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "report", str(DATA), "--slo", "FFT=1.3")
    assert code == 1
    assert "fft: DF p99 (host)" in out and out.rstrip().endswith("fail")


def test_report_slo_held_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    # 400 GEMM samples per phase are short of a p99 claim (its exceedances pair up); at p95
    # both checks are decided.
    args = ("report", str(DATA), "--slo", "fft=2.5", "--slo", "gemm=2")
    code, out, _ = run(capsys, *args, "--p", "95")
    assert code == 0
    assert sum(line.endswith(": pass") for line in out.splitlines()) == 2
    code, out, _ = run(capsys, *args)
    assert code == 0  # an undecided check is not a failed one
    assert "gemm: DF p99 (host) 1.21" in out and out.rstrip().endswith("inconclusive")


def test_report_writes_files_and_benchmark_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Figures are tested in test_plots.py; drawing them here would only cost seconds.
    monkeypatch.setattr("pytest_kts.plots.write_plots", lambda result, directory: [])
    out_dir, bench = tmp_path / "report", tmp_path / "bench.json"
    code, out, _ = run(
        capsys,
        "report",
        str(DATA / "fft.log"),
        str(DATA / "gemm.log"),
        "--out",
        str(out_dir),
        "--benchmark-json",
        str(bench),
        "--name",
        "study",
    )
    assert code == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    (scenario,) = summary["scenarios"]
    assert scenario["name"] == "study"
    # Per tenant: the garbage of its own file (fft.log: 2 foreign, 4 malformed; gemm.log: 1, 1).
    lines = {name: t["lines"] for name, t in scenario["tenants"].items()}
    assert {n: (v["samples"], v["foreign"], v["malformed"]) for n, v in lines.items()} == {
        "fft": (800, 2, 4),
        "gemm": (800, 1, 1),
    }
    assert (out_dir / "samples" / "study.csv").is_file()
    entries = json.loads(bench.read_text())
    assert {e["unit"] for e in entries} == {"ms", "x"}
    assert all(e["name"].startswith("study/") for e in entries)
    assert f"written to {out_dir}" in out


def test_report_v2_logs_use_the_host_clock_without_the_v1_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    for tenant, slow in (("fft", 1.7), ("matmul", 1.1)):
        lines = [
            format_meta(tenant, {"device": "cuda", "gpu_name": "NVIDIA H100", "torch": "2.11"})
        ]
        t = 1_700_000_000_000_000_000
        for phase, scale in (("solo", 1.0), ("shared", slow)):
            for i, ms in enumerate(scale * rng.lognormal(0, 0.2, 420)):
                s = Sample(tenant, phase, 0, i, t, t + int(ms * 1e6), float(ms), float(ms) * 0.6)
                lines.append(format_sample(s))
                t += 10_000_000
        (tmp_path / f"{tenant}.log").write_text("\n".join(lines) + "\n")
    code, out, _ = run(capsys, "report", str(tmp_path), "--slo", "fft=1.3")
    assert code == 1
    assert "study's v1 format" not in out
    assert "fft: DF p99 (host)" in out
    assert "0 foreign, 0 malformed" in out


# -- usage and input errors: exit 2, one line, no traceback ---------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["report", "/no/such/dir"], ["/no/such/dir does not exist"]),
        (["report", str(DATA), "--slo", "fft"], ["expected TENANT=THRESHOLD"]),
        (["report", str(DATA), "--slo", "fft=-1"], ["not a usable threshold"]),
        (["report", str(DATA), "--slo", "bert=1.3"], ["'bert'", "fft, gemm"]),
        (["report", str(DATA), "--p", "100"], ["not a percentile"]),
        (["report", str(DATA), "--bogus"], ["unrecognized arguments: --bogus"]),
        (["report"], ["LOGDIR"]),
        (["frobnicate"], ["invalid choice"]),
        (["run", "--tenant", "fft"], ["at least two --tenant"]),
        (["run", "--tenant", "fft:size=big", "--tenant", "matmul"], ["size='big'"]),
        (
            ["run", "--tenant", "fft:size=-4", "--tenant", "matmul"],
            ["size must be an integer from 1"],
        ),
        (["run", "--tenant", "fft", "--tenant", "matmul", "--iterations", "-3"], ["-3"]),
        (["run", "--tenant", "fft", "--tenant", "matmul", "--iterations", "0"], ["from 1 to"]),
        (["run", "--tenant", "fft", "--tenant", "matmul", "--iterations", "x"], ["'x'"]),
        (["run", "--tenant", "fft", "--tenant", "matmul", "--timeout", "0"], ["seconds from 1"]),
        (["run", "--tenant", "fft", "--tenant", "matmul", "--confidence", "2"], ["[0.5, 1)"]),
        (["run", "--tenant", "ftt", "--tenant", "matmul"], ["unknown workload 'ftt'", "fft"]),
        (
            ["run", "--tenant", "decode:layerz=2", "--tenant", "matmul"],
            ["unknown param 'layerz'", "allowed params: layers"],
        ),
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragments: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_line_error(err, *fragments)


@pytest.mark.parametrize("command", [[], ["run"], ["report"]])
def test_help_texts_are_plain(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "Exit codes: 0 ok, 1 a verdict failed, 2" in out
    assert "``" not in out and ":func:" not in out and ":class:" not in out  # no raw rst


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2 and "report" in err and "run" in err


def test_folder_without_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "report", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "no log files")
    (tmp_path / "junk.log").write_text("hello\nKTS_APP,v7,x\n\n")
    (tmp_path / "image.log").write_bytes(b"\x89PNG\0\0binary")
    code, _, err = run(capsys, "report", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "no KTS_APP sample lines", "1 file(s)", "1 foreign, 1 malformed")


def test_error_from_the_installed_entry_point_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_kts.cli", "report", "/no/such/dir"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "kts report: error:")


# -- kts run ---------------------------------------------------------------------------------------


def test_parse_tenant() -> None:
    spec = cli.parse_tenant("fft:size=4096,sleep_ms=100")
    assert (spec.name, spec.workload, spec.size, spec.sleep_ms) == ("fft", "fft", 4096, 100.0)
    spec = cli.parse_tenant("mypkg.loads:build:size=8,arrival=poisson,rate_hz=50,dim=3,name=emb")
    assert spec.workload == "mypkg.loads:build" and spec.name == "emb"
    assert spec.arrival == "poisson" and spec.rate_hz == 50.0 and dict(spec.params) == {"dim": "3"}
    assert cli.parse_tenant("mypkg.loads:build").workload == "mypkg.loads:build"
    assert cli.parse_tenant("matmul", taken=["matmul", "matmul-2"]).name == "matmul-3"
    assert cli.parse_tenant("matmul").size == 4096
    with pytest.raises(cli.UsageError, match="arrival must be one of"):
        cli.parse_tenant("fft:arrival=bursty")
    with pytest.raises(cli.UsageError, match="open-loop arrival needs rate_hz"):
        cli.parse_tenant("fft:arrival=poisson")


def test_names_the_user_gives_are_kept_and_a_name_given_twice_is_an_error() -> None:
    from pytest_kts.cli.run import parse_tenants

    names = [t.name for t in parse_tenants(["fft:size=16", "fft:size=32", "fft:name=fft-2"])]
    assert names == ["fft", "fft-3", "fft-2"]  # the unnamed copy is numbered around fft-2
    with pytest.raises(cli.UsageError, match="tenant name 'b' is given twice"):
        parse_tenants(["fft:name=b", "matmul:name=b"])
    with pytest.raises(cli.UsageError, match="not allowed"):
        parse_tenants(["fft:name=a\n", "matmul"])  # a trailing newline is no name


def fake_result(name: str, specs: list[TenantSpec], verdict: str) -> ScenarioResult:
    rng = np.random.default_rng(0)
    records = [
        Sample(
            s.name, phase, 0, i, 10**18 + i * 10**7, 10**18 + i * 10**7 + 10**6, float(x), math.nan
        )
        for s in specs
        for phase in ("solo", "shared")
        for i, x in enumerate(rng.lognormal(0, 0.1, 400))
    ]
    grouped = group(records)
    return ScenarioResult(
        name=name,
        device="cpu",
        tenants={s.name: TenantResult(spec=s, samples=grouped[s.name]) for s in specs},
        checks=[
            CheckOutcome(
                specs[0].name,
                99.0,
                "host",
                1.3,
                looks=3,
                df=make_df(CI[verdict], value=1.6),
            )
        ],
        stop_reason="every SLO decided after 3 round(s)",
    )


CI = {"fail": (1.4, 1.8), "pass": (1.0, 1.2), "inconclusive": (1.2, 1.8)}


@pytest.mark.parametrize(("verdict", "code"), [("fail", 1), ("pass", 0), ("inconclusive", 0)])
def test_run_calls_the_runner_and_maps_the_verdict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], verdict: str, code: int
) -> None:
    calls: dict[str, Any] = {}

    def run_scenario(
        name: str,
        tenants: list[TenantSpec],
        settings: RunSettings,
        slo: dict[str, float] | None = None,
        p: float = 99,
        progress: Any = None,
        **kwargs: Any,
    ) -> ScenarioResult:
        calls.update(
            name=name, tenants=tenants, settings=settings, slo=slo, p=p, progress=progress, **kwargs
        )
        return fake_result(name, tenants, verdict)

    monkeypatch.setattr("pytest_kts.runner.run_scenario", run_scenario)
    got, out, _ = run(
        capsys,
        "run",
        "--tenant",
        "fft:size=256,sleep_ms=100",
        "--tenant",
        "matmul:size=512,sleep_ms=150",
        "--device",
        "cpu",
        "--iterations",
        "600",
        "--slo",
        "fft=1.3",
        "-q",
    )
    assert got == code
    assert [t.name for t in calls["tenants"]] == ["fft", "matmul"]
    assert calls["tenants"][1].size == 512 and calls["tenants"][1].sleep_ms == 150
    assert calls["slo"] == {"fft": 1.3} and calls["p"] == 99 and calls["device"] == "cpu"
    settings = calls["settings"]
    assert settings.device == "cpu" and settings.max_iterations == 600
    assert calls["progress"].silent  # -q
    assert calls["telemetry_factory"] is None  # no NVML on the CPU
    lo, hi = CI[verdict]
    assert f"fft: DF p99 (host) 1.60 [{lo:.2f}, {hi:.2f}] < 1.3 at 95% confidence: {verdict}" in out


def test_run_without_slo_sets_fixed_iterations(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, RunSettings] = {}

    def run_scenario(
        name: str, tenants: list[TenantSpec], settings: RunSettings, *args: Any, **kwargs: Any
    ) -> ScenarioResult:
        seen["settings"] = settings
        result = fake_result(name, tenants, "pass")
        result.checks = []
        return result

    monkeypatch.setattr("pytest_kts.runner.run_scenario", run_scenario)
    code, _, _ = run(
        capsys, "run", "--tenant", "fft", "--tenant", "fft", "--device", "cpu", "--iterations", "50"
    )
    assert code == 0
    assert seen["settings"].iterations == 50 and seen["settings"].round_iterations == 50


def test_run_end_to_end_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Real worker processes, tiny workloads: the command works without a test file."""
    pytest.importorskip("torch")
    code, out, err = run(
        capsys,
        "run",
        "--tenant",
        "fft:size=32,sleep_ms=1",
        "--tenant",
        "matmul:size=32,sleep_ms=1",
        "--device",
        "cpu",
        "--iterations",
        "20",
        "--report",
        str(tmp_path),
    )
    assert code == 0, err
    assert "ad-hoc  [cpu" in out
    assert "kts ad-hoc: shared round 0: fft, matmul" in err  # progress on a non-TTY stream
    assert (tmp_path / "summary.json").is_file()


# -- the study's logs as they are: phase from names or options, both clocks, attribution --------


@pytest.mark.parametrize("layout", ["folders", "names"])
def test_report_study_layouts_take_the_phase_from_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    expect = make_logs.write_study_layout(tmp_path, layout)
    code, out, err = run(capsys, "report", str(tmp_path), "--slo", "fft=1.3")
    assert err == ""
    assert (
        f"{expect['samples']} samples, {expect['foreign']} foreign, "
        f"{expect['malformed']} malformed" in out
    )
    assert out.count("phaseless v1 lines read as solo") == 2
    assert out.count("phaseless v1 lines read as shared") == 2
    rows = [line.split() for line in out.splitlines() if line.startswith(("fft ", "gemm "))]
    assert {(r[0], r[1], r[2]) for r in rows} == {
        (t, p, c) for t in ("fft", "gemm") for p in ("solo", "shared") for c in ("host", "device")
    }
    # The FFT waits behind the GEMM: its host DF is large, its device DF about 1.05.
    fft_host = next(r for r in rows if r[:3] == ["fft", "shared", "host"])
    fft_device = next(r for r in rows if r[:3] == ["fft", "shared", "device"])
    assert float(fft_host[10]) > 2
    assert 0.95 < float(fft_device[10]) < 1.2
    # Attribution from the two logs that cover the same time.
    assert "gemm" in fft_host[-4] and "lift" in " ".join(fft_host)
    assert "fft: tail growth is" in out and "waiting for the GPU" in out
    assert code == 1 and "fft: DF p99 (host)" in out


def test_report_study_plain_names_need_solo_and_shared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expect = make_logs.write_study_layout(tmp_path, "plain")
    code, _, err = run(capsys, "report", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "no sample has a phase", "--solo PATH... --shared PATH...")
    files = expect["files"]
    code, out, err = run(
        capsys,
        "report",
        "--solo",
        files["FFT/solo"],
        files["GEMM/solo"],
        "--shared",
        files["FFT/shared"],
        files["GEMM/shared"],
    )
    assert code == 0 and err == ""
    assert f"{expect['samples']} samples" in out
    assert "fft: tail growth is" in out


def test_report_flags_a_clock_that_stepped_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_logs.write_study_layout(tmp_path, "names")
    path = tmp_path / "fft_solo.log"
    lines = path.read_text().splitlines()
    # Iteration 100 observed its end before iteration 99 did: an NTP step back.
    k = next(i for i, line in enumerate(lines) if line.startswith("KTS_APP,v1,FFT,100,"))
    f = lines[k].split(",")
    step = 5 * 10**9
    f[4], f[5] = str(int(f[4]) - step), str(int(f[5]) - step)
    lines[k] = ",".join(f)
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = run(capsys, "report", str(tmp_path))
    assert code == 0
    assert f"{path}: 1 iteration(s) end before the one before them" in out


def test_report_reads_the_plugins_own_samples_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pytest_kts.plots.write_plots", lambda result, directory: [])
    first = tmp_path / "first"
    code, _, _ = run(capsys, "report", str(DATA), "--out", str(first), "--name", "study")
    assert code == 0
    csv_text = (first / "samples" / "study.csv").read_text()
    (first / "samples" / "study.telemetry.csv").write_text("time_ns,sm_clock_mhz\n1,2\n")
    code, out, err = run(capsys, "report", str(first), "--slo", "fft=1.3")
    assert err == ""
    n = len(csv_text.splitlines()) - 1
    assert f"{n} samples, 0 foreign, 0 malformed" in out
    assert "not a samples CSV" in out  # the telemetry CSV is skipped, and said so
    assert code == 1 and "fft: DF p99 (host)" in out
    table = [line.split() for line in out.splitlines() if line.startswith("fft ")]
    assert len(table) == 4


def test_report_bounds_long_lines_and_gz_bombs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip

    from pytest_kts.protocol import MAX_LINE_BYTES

    logs = tmp_path / "logs"
    logs.mkdir()
    good = (DATA / "fft.log").read_text()
    huge = "KTS_APP,v1," + "9" * (3 * MAX_LINE_BYTES)
    (logs / "fft.log").write_text(huge + "\n" + good + huge)  # one in front, one unterminated
    code, out, _ = run(capsys, "report", str(logs))
    assert code == 0
    # fft.log's own 4 malformed lines, and the two overlong ones (never held whole).
    assert "800 samples, 2 foreign, 6 malformed" in out
    assert f"line longer than {MAX_LINE_BYTES} bytes" in out
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    with gzip.open(bomb / "fft.log.gz", "wt") as f:
        f.write(good * 40)
    code, _, err = run(capsys, "report", str(bomb), "--max-bytes", "100000")
    assert code == 2
    assert_one_line_error(err, "expands past 100000 bytes")
    # A corrupt .gz, alone, is named in the error rather than counted as "0 file(s)".
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "fft.log.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    code, _, err = run(capsys, "report", str(corrupt))
    assert code == 2
    assert "fft.log.gz" in err
