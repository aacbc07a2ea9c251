"""pytest-xdist: workers send their results to the controller, which writes one report and
prints one table; CPU scenarios take a lock so they never share the cores (issue 12 item 2)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from pytest_kts import transfer
from pytest_kts.backends.base import TenantSpec
from pytest_kts.matrix import MatrixResult
from pytest_kts.protocol import Sample
from pytest_kts.results import CheckOutcome, PhaseWindow, ScenarioResult, TenantResult
from pytest_kts.samples import PhaseSamples, group
from pytest_kts.verdict import degradation

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _result() -> ScenarioResult:
    rng = np.random.default_rng(3)
    records = []
    t = 1_700_000_000_000_000_000
    for phase, scale in (("solo", 1.0), ("shared", 1.4)):
        for name in ("fft", "gemm"):
            for i, ms in enumerate(scale * rng.lognormal(0, 0.2, 300)):
                device = math.nan if name == "gemm" else float(ms) * 0.9
                end = t + int(ms * 1e6)
                records.append(Sample(name, phase, i // 150, i, t, end, float(ms), device))
                t = end + 1000
    grouped = group(records)
    tenants = {
        n: TenantResult(
            spec=TenantSpec(n, "fft", 64, sleep_ms=1.5, params={"k": "v"}, env={"A": "1"}),
            samples=grouped[n],
            meta={"pid": 12, "torch": "2.13"},
            accounting={"samples": 600, "malformed": 0},
            on_inconclusive="fail",
        )
        for n in grouped
    }
    fft = grouped["fft"]
    seq = degradation(fft.solo.latency("host"), fft.shared.latency("host"), p=99, alpha=0.01)
    tenants["fft"].sequential[(99.0, "host")] = seq
    return ScenarioResult(
        name="t.py::test_a",
        device="cpu",
        tenants=tenants,
        windows=[PhaseWindow("solo", 0, ("fft",), 10, 20)],
        machine={"cpu": "x", "cores": np.int64(2)},
        checks=[CheckOutcome("fft", 99.0, "host", 2.0, df=seq, looks=2, rounds=3)],
        gpu_seconds=1.25,
        stop_reason="every SLO decided",
        started_at="2026-11-29T00:00:00+00:00",
        warnings=["w"],
        comparisons=[{"tenant": "fft", "verdict": "inconclusive", "baseline": "main"}],
        baseline_saved="/tmp/b",
    )


def test_scenario_round_trips_through_plain_json() -> None:
    before = _result()
    text = transfer.dumps([before], [])
    json.loads(text)  # builtin types only: what execnet can carry
    (after,), matrices = transfer.loads(text)
    assert matrices == []
    for field in ("name", "device", "windows", "gpu_seconds", "stop_reason"):
        assert getattr(after, field) == getattr(before, field), field
    # A check comes back as one record: the same figures, evidence included.
    assert [c.to_dict() for c in after.checks] == [c.to_dict() for c in before.checks]
    assert after.machine == {"cpu": "x", "cores": 2}
    assert (after.comparisons, after.baseline_saved) == (before.comparisons, "/tmp/b")
    for name, t in before.tenants.items():
        a = after.tenants[name]
        assert a.spec == t.spec and a.meta == t.meta and a.on_inconclusive == "fail"
        for phase in ("solo", "shared"):
            x, y = t.samples.phase(phase), a.samples.phase(phase)
            np.testing.assert_array_equal(x.start_ns, y.start_ns)
            np.testing.assert_array_equal(x.host_ms, y.host_ms)
            np.testing.assert_array_equal(x.device_ms, y.device_ms)  # NaN survives
        assert a.clocks() == t.clocks()
        assert a.summary("shared") == t.summary("shared")
    # The adaptive DF comes back as it was judged (not re-judged at the full error rate).
    df_before, df_after = before["fft"].df(99), after["fft"].df(99)
    assert (df_after.value, df_after.ci, df_after.alpha) == (
        df_before.value,
        df_before.ci,
        df_before.alpha,
    )


def test_matrix_round_trips() -> None:
    ps = PhaseSamples.from_records(
        "a", "solo", [Sample("a", "solo", 0, i, i, i + 10, 1.0 + i, math.nan) for i in range(5)]
    )
    m = MatrixResult("m", "cpu", ["a", "b"], {"a": ps, "b": ps}, {("a", ("b",)): ps})
    (), (back,) = transfer.loads(transfer.dumps([], [m]))
    assert back.tenants == ["a", "b"] and list(back.shared) == [("a", ("b",))]
    np.testing.assert_array_equal(back.solo["a"].host_ms, ps.host_ms)


XDIST_SCENARIO = """
import pytest

@pytest.mark.parametrize("size", [16, 32])
def test_pair(kts, size):
    kts.tenant("fft", size=size, sleep_ms=0.2, warmup=1)
    kts.tenant("matmul", size=16, sleep_ms=0.2, warmup=1)
    kts.run()
"""


def test_xdist_one_report_one_table_and_cpu_scenarios_never_overlap(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("KTS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("KTS_LOCK_DIR", str(tmp_path / "locks"))
    pytester.makepyfile(XDIST_SCENARIO)
    report = tmp_path / "report"
    result = pytester.runpytest_subprocess(
        "-n", "2", "--kts-device", "cpu", "--kts-iterations", "200",
        "--kts-round-iterations", "100", "--kts-report", str(report), "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert out.count("kts: co-location latency") == 1
    result.stdout.fnmatch_lines(["*test_pair?16?*"])
    result.stdout.fnmatch_lines(["*test_pair?32?*"])
    summary = json.loads((report / "summary.json").read_text())
    names = sorted(s["name"] for s in summary["scenarios"])
    assert names == [n for n in names if "test_pair" in n] and len(names) == 2
    # The real command line (pytester adds --basetemp), not "-c" nor __main__.py.
    assert summary["command"].startswith("pytest --basetemp=")
    assert " -n 2 --kts-device cpu " in summary["command"]
    assert len(list((report / "samples").glob("*.csv"))) >= 2
    # The lock: one scenario's phases all end before the other's begin.
    spans = sorted(
        (min(w["started_ns"] for w in s["windows"]), max(w["ended_ns"] for w in s["windows"]))
        for s in summary["scenarios"]
    )
    assert spans[0][1] <= spans[1][0], spans
