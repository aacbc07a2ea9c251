"""A threshold or percentile that no verdict can be judged against is an error where it enters
(issue 19 item 2): in a comparison, in ``slo=``, in ``p=``, in ``kts run``/``kts report``."""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pytest_kts import ConfigError, KtsInconclusiveWarning, assert_df
from pytest_kts.cli import main
from pytest_kts.thresholds import check_percentile, check_threshold
from tests.test_cli import assert_one_line_error
from tests.test_fixture import make_kts

BAD_THRESHOLDS = [math.nan, np.float64("nan"), math.inf, -math.inf, 0, 0.0, -1, -0.5, 10**400]
OPERATORS = [operator.lt, operator.le, operator.gt, operator.ge]


def _ran(policy: str = "warn", n: int = 40) -> object:
    kts, _ = make_kts(policy, n)
    fft = kts.tenant("fft")
    kts.tenant("matmul")
    kts.run()
    return fft


@pytest.mark.parametrize("policy", ["warn", "fail", "skip", "error"])
@pytest.mark.parametrize("threshold", BAD_THRESHOLDS)
@pytest.mark.parametrize("op", OPERATORS)
def test_a_comparison_with_an_unusable_threshold_is_an_error(
    policy: str, threshold: float, op: Callable[[object, object], bool]
) -> None:
    df = assert_df(_ran(policy), p=99)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error", KtsInconclusiveWarning)  # no "holds, with a warning"
        with pytest.raises(ConfigError, match="is not a usable threshold") as info:
            op(df, threshold)
    assert len(str(info.value).splitlines()) == 1


def test_a_usable_threshold_still_compares() -> None:
    df = assert_df(_ran(n=1000), p=99)  # type: ignore[arg-type]
    assert df < 1e6 and not df > 1e6 and df > 1e-6


@pytest.mark.parametrize("threshold", BAD_THRESHOLDS)
def test_an_unusable_slo_is_refused_before_anything_runs(threshold: float) -> None:
    kts, session = make_kts()
    fft = kts.tenant("fft")
    kts.tenant("matmul")
    with pytest.raises(ConfigError, match=r"SLO threshold for 'fft' .* not a usable threshold"):
        kts.run(slo={fft: threshold})
    assert session.calls == []


@pytest.mark.parametrize("p", [150, 100, 0, -1, math.nan, math.inf, "99", True])
def test_a_percentile_outside_0_100_is_refused_before_anything_runs(p: object) -> None:
    kts, session = make_kts()
    fft = kts.tenant("fft")
    kts.tenant("matmul")
    with pytest.raises(ConfigError, match="is not a percentile"):
        kts.run(slo={fft: 1.3}, p=p)  # type: ignore[arg-type]
    assert session.calls == []
    kts.run()
    with pytest.raises(ConfigError, match="is not a percentile"):
        assert_df(fft, p=p)  # type: ignore[arg-type]


def test_an_unknown_clock_is_refused() -> None:
    with pytest.raises(ConfigError, match="clock must be one of host, device"):
        assert_df(_ran(), clock="wall")  # type: ignore[arg-type]


def test_the_checks_accept_what_they_should() -> None:
    assert check_threshold(1.3) == 1.3 and check_threshold(np.float32(2)) == 2.0
    assert check_percentile(99) == 99.0 and check_percentile(99.9) == 99.9


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "1e400", "abc", ""])
def test_kts_refuses_an_unusable_slo_in_one_line(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--tenant", "fft", "--tenant", "matmul", "--slo", f"fft={value}"]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "--slo")
    log = tmp_path / "x.log"
    log.write_text("")
    assert main(["report", str(log), "--slo", f"fft={value}"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--slo")


@pytest.mark.parametrize("value", ["150", "0", "100", "nan", "x"])
def test_kts_refuses_a_percentile_outside_0_100(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--tenant", "fft", "--tenant", "matmul", "--p", value]) == 2
    assert_one_line_error(capsys.readouterr().err, "not a percentile")


def test_an_slo_given_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--tenant", "fft", "--tenant", "matmul", "--slo", "fft=1.3", "--slo", "fft=1.5"]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "--slo 'fft=1.5': 'fft' has an SLO already")
