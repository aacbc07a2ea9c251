"""One interval per verdict, said so that no missing end reads as a value, and summary lines
that say what was found (issue 12 items 3-5, issue 18 items 2-3)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from dfs import make_df, phase

from pytest_kts import assert_df
from pytest_kts.backends.base import TenantSpec
from pytest_kts.protocol import Sample
from pytest_kts.report import (
    _df_cell,
    check_line,
    check_summary_lines,
    comparison_line,
    interval_text,
    render_markdown,
    slug,
    summary_lines,
)
from pytest_kts.results import CheckOutcome, ScenarioResult, TenantResult
from pytest_kts.samples import group
from pytest_kts.verdict import DegradationFactor


def _df(ci: tuple[float, float], reason: str | None = None) -> DegradationFactor:
    return make_df(ci, value=2.11, reason=reason)


def test_interval_text_shows_only_the_ends_that_exist_in_words() -> None:
    assert interval_text(1.94, 2.3) == "[1.94, 2.30]"
    # A missing end is said, never written as 0 or infinity ("DF may be 0").
    assert interval_text(1.9, math.inf) == "(≥ 1.90)"
    assert interval_text(0.0, 13.59) == "(≤ 13.59)"
    assert interval_text(0.0, math.inf) == "(no bound yet)"
    assert interval_text(None, None) == "(no bound yet)"
    assert interval_text(7.471, 14.177, 3, significant=True) == "[7.47, 14.2]"


def test_below_the_floor_the_table_shows_no_two_sided_interval() -> None:
    assert _df_cell(_df((1.94, 2.30))) == "2.11 [1.94, 2.30]"
    # A phase short of its floor removes one end (degradation() gives inf or 0 there), and
    # the table shows only the end that exists, starred with the reason below it.
    assert _df_cell(_df((1.94, math.inf), reason="no upper bound")) == "2.11 (≥ 1.94)*"
    assert _df_cell(_df((0.0, 2.30), reason="no lower bound")) == "2.11 (≤ 2.30)*"
    assert _df_cell(_df((0.0, math.inf), reason="too few samples")) == "2.11 (no bound yet)*"
    # Fewer samples than the percentile needs at all: not a figure.
    few = make_df((1.0, 3.0), value=2.0, solo=phase(kept=40), shared=phase(kept=45))
    assert _df_cell(few) == "n/a (n=40)"


def test_undecided_check_line_with_estimate_reason_and_power() -> None:
    result = ScenarioResult(name="t.py::test_x", device="cpu", tenants={})
    power = "at this noise, deciding needs about 900 more samples per phase, about 40 s"
    check = CheckOutcome(
        "fft", 99.0, "host", 1.3, df=make_df((1.1, 1.5), value=1.28, level=0.0125), looks=4,
        power=power,
    )  # fmt: skip
    line = check_line(result, check)
    assert line == (
        "t.py::test_x fft: DF p99 (host) 1.28 [1.10, 1.50] vs 1.3 at look 4: the 95% interval "
        f"does not exclude the threshold 1.3; {power}"
    )
    passed = CheckOutcome("fft", 99.0, "host", 1.3, df=make_df((1.0, 1.2), value=1.1))
    result.checks = [check, passed]
    lines = [text for text, _ in summary_lines([result])]
    assert lines == ["kts: 1 SLO check(s) undecided:", f"  {line}"]


def test_comparison_lines_say_what_was_found() -> None:
    result = ScenarioResult(name="s", device="cpu", tenants={})
    base = {
        "tenant": "fft", "p": 99.0, "clock": "host", "baseline_ms": 0.076, "current_ms": 2.88,
        "ratio": 37.9, "ci": [30.0, 48.0], "threshold": 1.1, "n_baseline": 400,
        "n_current": 400, "reason": None, "baseline": "main",
    }  # fmt: skip
    assert comparison_line(result, base | {"verdict": "fail"}).endswith(
        "2.880 ms vs 0.076 ms = 37.90x [30.00, 48.00]: REGRESSION (threshold 1.1x)"
    )
    undecided = base | {"verdict": "inconclusive", "reason": "too few samples"}
    assert comparison_line(result, undecided).endswith(
        ": undecided (threshold 1.1x): too few samples"
    )
    result.comparisons = [undecided]
    result.baseline_saved = "/b/main/s"
    lines = [text for text, _ in summary_lines([result])]
    assert lines[0] == "kts: compared with baseline 'main':"
    assert lines[-1] == "kts: s: baseline saved to /b/main/s"


def _tenant_result(name: str, slow: float) -> TenantResult:
    """600 solo and 600 shared iterations in 6 rounds, the shared ones ``slow`` times longer."""
    rng = np.random.default_rng(7)
    records = [
        Sample(name, phase, i // 100, i, 0, 0, float(x), math.nan)
        for phase, factor in (("solo", 1.0), ("shared", slow))
        for i, x in enumerate(factor * rng.gamma(20.0, 0.05, 600))
    ]
    return TenantResult(spec=TenantSpec(name, "fft", 16), samples=group(records, [name])[name])


def test_an_assertion_without_an_slo_gets_its_summary_line() -> None:
    """A fixed-protocol test has no SLO check, only ``assert_df`` comparisons: a failure there
    is named in the session's one-line-per-check summary (a GPU run once listed 5 held checks
    and left out the test that failed)."""
    fft, gemm = _tenant_result("fft", 3.0), _tenant_result("gemm", 1.0)
    result = ScenarioResult(
        name="t.py::test_fixed", device="cpu", tenants={"fft": fft, "gemm": gemm}
    )
    assert not (assert_df(fft, p=50) < 1.3)  # DF 3: the comparison fails
    assert assert_df(gemm, p=50) < 1.3
    assert assert_df(gemm, p=50) < 2.0  # two thresholds on one DF: one line, both named
    lines = [text for text, _ in check_summary_lines([result], Path("/r"))]
    assert lines[0] == "kts: 2 check(s), one line each:"
    failed, held = lines[1], lines[2]
    assert failed.split()[:6] == ["FAILED", "t.py::test_fixed", "fft", "(host)", "DF", "p50"]
    assert f"{fft.df(50, 'host').value:#.3g}" in failed
    assert "vs 1.3 (asserted DF < 1.3: FAILED)" in failed
    assert failed.endswith(f"plot: /r/plots/{slug(result.name)}/degradation.png")
    assert held.split()[:3] == ["held", "t.py::test_fixed", "gemm"]
    assert "vs 1.3 and 2 (asserted DF < 1.3: held; asserted DF < 2: held)" in held
    # An assertion that an SLO check already covers is that check's line, not a second one.
    result.checks = [CheckOutcome("gemm", 50.0, "host", 1.3, df=gemm.df(50, "host"))]
    again = [text for text, _ in check_summary_lines([result])]
    assert len(again) == 3 and sum(" gemm " in line for line in again) == 1


def test_results_md_leads_a_verdict_with_what_the_test_asserted() -> None:
    """A GPU run's results.md read "**fail** at look 1 ...; asserted DF > 1.3: held: held" for
    a test that passed: the gate's word (said of DF < SLO) led, and the outcome came twice."""
    fft, gemm = _tenant_result("fft", 3.0), _tenant_result("gemm", 1.0)
    result = ScenarioResult(name="t.py::test_x", device="cpu", tenants={"fft": fft, "gemm": gemm})
    result.checks = [
        CheckOutcome(name, 50.0, "host", 1.3, df=t.df(50, "host"), looks=1, rounds=6)
        for name, t in (("fft", fft), ("gemm", gemm))
    ]
    assert assert_df(fft, p=50) > 1.3  # the test expects the degradation
    md = render_markdown([result], None).splitlines()
    asserted = next(line for line in md if line.startswith("- fft: DF p50 (host)"))
    assert "vs 1.3: asserted DF > 1.3: **held** at look 1 (6 rounds; as SLO DF < 1.3: fail)" in (
        asserted
    )
    assert "**fail**" not in asserted and "held: held" not in asserted
    gated = next(line for line in md if line.startswith("- gemm: DF p50 (host)"))
    assert "vs 1.3: SLO < 1.3: **pass** at look 1 (6 rounds)" in gated
    # Two comparisons on one DF: each with its outcome, the whole in bold.
    assert not (assert_df(fft, p=50) < 2.0)
    md = render_markdown([result], None).splitlines()
    both = next(line for line in md if line.startswith("- fft: DF p50 (host)"))
    assert "asserted DF > 1.3: held; asserted DF < 2: FAILED: **FAILED** at look 1" in both
