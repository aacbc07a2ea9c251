"""pytest_kts.verdict: the degradation factor, its interval, verdicts and comparisons."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from dfs import make_df
from scipy.signal import lfilter

from pytest_kts.errors import KtsError, StatisticsError
from pytest_kts.verdict import (
    InconclusiveError,
    KtsInconclusiveWarning,
    degradation,
)


def rounds(rng: np.random.Generator, n_rounds: int, r: int, rho: float, sigma: float):
    e = rng.standard_normal((n_rounds, r))
    e[:, 1:] *= math.sqrt(1 - rho**2)
    z = lfilter([1.0], [1.0, -rho], e, axis=1)
    return np.exp(sigma * z).ravel(), np.repeat(np.arange(n_rounds), r)


# -- the object ---------------------------------------------------------------------------------


def test_repr_float_and_no_truth_value() -> None:
    df = make_df((1.42, 2.22))
    assert repr(df) == "DF p99 (host) 1.68 [1.42, 2.22] n=540/540"
    assert float(df) == 1.68
    with pytest.raises(TypeError, match="compare it with a threshold"):
        bool(df)
    with pytest.raises(TypeError):
        assert df  # the point: a bare assert must not pass silently


def test_verdicts_follow_the_interval() -> None:
    df = make_df((1.42, 2.22))
    assert df.verdict(1.3) == "fail"
    assert df.verdict(2.5) == "pass"
    assert df.verdict(1.68) == "inconclusive"
    assert df.verdict(1.42) == "inconclusive"  # touching the bound is not "entirely above"
    # A bound the samples cannot give is 0 or infinity; the verdict follows what exists.
    assert make_df((0.0, math.inf), reason="too few").verdict(1.3) == "inconclusive"
    one_sided = make_df((1.42, math.inf), reason="no upper bound")
    assert one_sided.verdict(1.3) == "fail"
    assert one_sided.verdict(2.5) == "inconclusive"


def test_comparisons_decided() -> None:
    df = make_df((1.42, 2.22))
    assert not (df < 1.3)
    assert not (df <= 1.3)
    assert df > 1.3
    assert df >= 1.3
    assert df < 2.5
    assert not (df > 2.5)
    assert not (1.3 > df)  # noqa: SIM300 - reflected: df.__lt__(1.3)
    assert 2.5 > df  # noqa: SIM300


def test_comparison_with_non_numbers_is_not_implemented() -> None:
    df = make_df((1.42, 2.22))
    with pytest.raises(TypeError):
        _ = df < "1.3"
    with pytest.raises(TypeError):
        _ = df < True


def test_inconclusive_warn_holds_with_a_warning() -> None:
    df = make_df((1.2, 1.5))
    with pytest.warns(KtsInconclusiveWarning, match=r"1\.68 \[1\.20, 1\.50\] n=540/540"):
        assert df < 1.3
    with pytest.warns(KtsInconclusiveWarning):
        assert df > 1.3  # both directions hold: no alarm without evidence


def test_inconclusive_fail_does_not_hold() -> None:
    df = make_df((1.2, 1.5), policy="fail")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning
        assert not (df < 1.3)


def test_frozen_and_the_policy_travels_with_a_copy() -> None:
    df = make_df((1.2, 1.5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        df.on_inconclusive = "fail"  # type: ignore[misc]
    strict = df.with_policy("fail")
    assert strict is not df and strict.on_inconclusive == "fail"
    assert df.on_inconclusive == "warn"  # the original is unchanged
    assert df.with_policy("warn") is df
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not (strict < 1.3)
    with pytest.warns(KtsInconclusiveWarning):
        assert df < 1.3
    assert not hasattr(df, "last_comparison")


def test_inconclusive_skip_and_error() -> None:
    with pytest.raises(pytest.skip.Exception, match="inconclusive"):
        _ = make_df((1.2, 1.5), policy="skip") < 1.3
    with pytest.raises(InconclusiveError, match="too few samples") as info:
        _ = make_df((1.2, 1.5), reason="too few samples", policy="error") < 1.3
    assert isinstance(info.value, KtsError)
    with pytest.raises(ValueError, match="on_inconclusive"):
        make_df((1.2, 1.5), policy="maybe")


def test_explain_lines_put_the_verdict_and_the_cause_first() -> None:
    df = dataclasses.replace(
        make_df((1.42, 2.22), level=0.0112), tenant="fft", context=lambda: ["gemm took it"]
    )
    assert not (df < 1.3)
    lines = df.explain("<", 1.3)
    # Line 1: the verdict with its numbers, short enough for pytest's short summary.
    assert (
        lines[0] == "DF p99 1.68 [1.42, 2.22] > 1.3 at 95% confidence: fft's p99 1.23 -> 2.07 ms "
        "(host clock)"
    )
    assert len(lines[0]) <= 100
    # Line 2: why; then the verdict in words and the samples.
    assert lines[1] == "why: gemm took it"
    assert lines[2] == (
        "verdict: fail: the whole 95% interval lies above 1.3, so `DF < 1.3` does not hold"
    )
    assert lines[3].startswith("samples per phase: solo 540 / shared 540 after warmup (of 600")
    # The look's own level and the method only with -vv: the user's 95% is the label.
    assert "98.9" not in "\n".join(lines) and "method:" not in "\n".join(lines)
    verbose = "\n".join(df.explain("<", 1.3, verbose=True))
    assert "sequential: this look's interval is at 98.88%" in verbose
    assert "method: bootstrap over 10 round pairs, each drawn whole" in verbose
    assert "missing end: need more" in "\n".join(
        make_df((1.0, math.inf), reason="need more").explain("<", 1.3)
    )


# -- degradation() ------------------------------------------------------------------------------


def test_degradation_rejects_empty_and_nan_only() -> None:
    good = np.ones(500)
    with pytest.raises(StatisticsError, match="no solo samples"):
        degradation([], good)
    with pytest.raises(StatisticsError, match="nan or infinite"):
        degradation(good, np.full(500, np.nan))
    with pytest.raises(StatisticsError, match="positive baseline"):
        degradation(np.zeros(500), good, trim=False)
    with pytest.raises(ValueError):
        degradation(good, good, p=100)
    with pytest.raises(ValueError):
        degradation(good, good, confidence=1.0)
    with pytest.raises(ValueError, match="segments"):
        degradation(good, good, solo_segments=np.zeros(3))


def test_degradation_counts_dropped_nan_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    a = rng.lognormal(0, 0.3, 1500)
    b = rng.lognormal(0, 0.3, 1500)
    a[[3, 70, 900]] = np.nan
    d1 = degradation(a, b)
    d2 = degradation(a, b)
    assert d1.dropped_solo == 3 and d1.dropped_shared == 0
    assert d1.ci == d2.ci  # no random numbers: the same samples give the same interval
    # A smaller alpha (a sequential look) gives a wider interval around the same estimate.
    d3 = degradation(a, b, alpha=0.001)
    assert d3.value == d1.value
    assert d3.ci[0] < d1.ci[0] and d3.ci[1] > d1.ci[1]
    assert d3.alpha == 0.001


def test_degradation_below_the_floor_is_inconclusive() -> None:
    rng = np.random.default_rng(2)
    a = rng.lognormal(0, 0.1, 200)
    b = 3 * rng.lognormal(0, 0.1, 200)  # an obvious regression, but p99 of 200 samples
    d = degradation(a, b, trim=False)
    assert d.value > 2.5
    assert d.verdict(1.3) == "inconclusive"
    assert "368" in d.reason  # the two-sided 95% floor for p99
    assert "more per phase" in d.reason
    assert d.evidence.limited_by == "floor"


def test_degradation_clear_cases() -> None:
    rng = np.random.default_rng(3)
    a, sa = rounds(rng, 20, 100, 0.5, 0.25)
    b, sb = rounds(rng, 20, 100, 0.5, 0.25)
    same = degradation(a, b, solo_segments=sa, shared_segments=sb)
    assert same.verdict(1.3) == "pass"
    assert same.ci[0] < 1.0 < same.ci[1]
    worse = degradation(a, 2.0 * b, solo_segments=sa, shared_segments=sb)
    assert worse.verdict(1.3) == "fail"
    assert worse.value == pytest.approx(2.0 * same.value)
    assert worse.n_solo == same.n_solo
    assert "bootstrap over 20 round pairs" in worse.method
    assert worse.evidence.unit_kind == "round pairs"


def test_interval_coverage_iid() -> None:
    # 95% two-sided interval for the true DF = 1: each side may miss 2.5% of the time.
    rng = np.random.default_rng(5)
    runs = 120
    for n in (1000, 10000):
        lo_miss = hi_miss = 0
        upper_over_lower = []
        for _ in range(runs):
            a = rng.lognormal(0, 0.5, n)
            b = rng.lognormal(0, 0.5, n)
            d = degradation(a, b, trim=False)
            lo_miss += d.ci[0] > 1.0
            hi_miss += d.ci[1] < 1.0
            upper_over_lower.append(math.log(d.ci[1] / d.value) / math.log(d.value / d.ci[0]))
        # 2.5% of 120 is 3; 9 or more on one side would be p < 0.01 for a calibrated interval.
        assert lo_miss <= 8 and hi_miss <= 8
    # Not absurdly wide once the tail has shown itself (0 misses in 120 is p = 0.002), and
    # the upper end's prior clustering (evidence.upper_dispersion) has faded: at 100
    # exceedances a phase the interval is as wide above as below.
    assert lo_miss + hi_miss >= 1
    assert 0.85 < float(np.median(upper_over_lower)) < 1.15


def test_upper_end_assumes_clustering_until_the_tail_shows_it() -> None:
    # 10 exceedances a phase: the upper end (what a pass rests on) is wider than the lower
    # one, because ten independent-looking exceedances cannot yet rule out a tail of rare
    # runs that the sample missed (docs/statistics.md section 4).
    rng = np.random.default_rng(6)
    d = degradation(rng.lognormal(0, 0.5, 1000), rng.lognormal(0, 0.5, 1000), trim=False)
    ev = d.evidence
    assert ev.shared.inflation < 1.5 < ev.shared.inflation_up < 2.5
    assert math.log(d.ci[1] / d.value) > 1.3 * math.log(d.value / d.ci[0])


def test_interval_holds_under_strong_autocorrelation() -> None:
    # AR(1) rho = 0.9 in rounds of 100: the iid bootstrap covers ~55% here (NOTES section 2).
    rng = np.random.default_rng(6)
    false_fail = decided = 0
    runs = 60
    for _ in range(runs):
        a, sa = rounds(rng, 24, 100, 0.9, 0.5)
        b, sb = rounds(rng, 24, 100, 0.9, 0.5)
        d = degradation(a, b, solo_segments=sa, shared_segments=sb)
        decided += d.reason is None
        false_fail += d.verdict(1.0) == "fail"
    # At rho 0.9 the p99 exceedances come in runs (count dispersion about 6), so 2400 samples
    # are about 400 independent ones: around the 368 a p99 bound needs, often short of it.
    assert decided >= runs // 3
    assert false_fail <= 5  # nominal 2.5% = 1.5 of 60


def test_more_samples_for_a_pass_count_the_prior_fading() -> None:
    # The pass side's prior clustering fades as exceedances come, so the samples a bound
    # needs are fewer than today's dispersion times the floor, and about that many suffice.
    from pytest_kts.evidence import floor_samples, raw_floor

    solo = np.random.default_rng(1).lognormal(0, 0.3, 2000)
    shared = np.random.default_rng(2).lognormal(0, 0.3, 3000)
    ev = degradation(solo, shared[:500], trim=False).evidence
    floor = floor_samples(99, ev.level)
    assert floor is not None and not ev.shared_bounded
    need = raw_floor(ev.p, ev.solo, ev.shared, floor, "shared")
    assert ev.shared.kept < need < math.ceil(floor * ev.shared.inflation_up)
    assert f"a pass needs about {need - ev.shared.kept} more shared samples" in str(ev.reason)
    later = degradation(solo, shared[: round(need * 1.15)], trim=False).evidence
    assert later.shared_bounded
