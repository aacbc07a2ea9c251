"""One interval per verdict, and summary lines that say what was found (issue 12 items 3-5)."""

from __future__ import annotations

import math

from dfs import make_df

from pytest_kts.report import _df_cell, check_line, comparison_line, interval_text, summary_lines
from pytest_kts.results import ScenarioResult
from pytest_kts.verdict import DegradationFactor


def _df(ci: tuple[float, float], reason: str | None = None) -> DegradationFactor:
    return make_df(ci, value=2.11, reason=reason)


def test_interval_text_shows_only_the_ends_that_exist() -> None:
    assert interval_text(1.94, 2.3) == "[1.94, 2.30]"
    assert interval_text(1.9, math.inf) == "[1.90, ∞)"
    assert interval_text(0.0, math.inf) == "(0, ∞)"
    assert interval_text(None, None) == "(0, ∞)"


def test_below_the_floor_the_table_shows_no_two_sided_interval() -> None:
    assert _df_cell(_df((1.94, 2.30))) == "2.11 [1.94, 2.30]"
    # A phase short of its floor removes one end (degradation() gives inf or 0 there), and
    # the table shows only the ends that exist, starred with the reason below it.
    assert _df_cell(_df((1.94, math.inf), reason="no upper bound")) == "2.11 [1.94, ∞)*"
    assert _df_cell(_df((0.0, 2.30), reason="no lower bound")) == "2.11 (0, 2.30]*"
    assert _df_cell(_df((0.0, math.inf), reason="too few samples")) == "2.11 (0, ∞)*"


def test_undecided_check_line_with_estimate_reason_and_power() -> None:
    result = ScenarioResult(name="t.py::test_x", device="cpu", tenants={})
    check = {
        "tenant": "fft", "p": 99.0, "threshold": 1.3, "clock": "host", "value": 1.28,
        "ci": [1.1, 1.5], "verdict": "inconclusive", "looks": 4, "alpha": 0.0125,
        "reason": None,
        "power": "at this noise, deciding needs about 900 more samples per phase, about 40 s",
    }  # fmt: skip
    line = check_line(result, check)
    assert line == (
        "t.py::test_x fft: DF p99 (host) 1.28 [1.10, 1.50] vs 1.3 after 4 look(s), alpha 0.0125: "
        "the interval contains the threshold 1.3; at this noise, deciding needs about 900 more "
        "samples per phase, about 40 s"
    )
    result.checks = [check, check | {"verdict": "pass"}]
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
