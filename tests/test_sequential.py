"""pytest_kts.sequential: spending over looks at any sample counts, look plans, evaluate()."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from pytest_kts.evidence import Evidence
from pytest_kts.planner import (
    ROUND_MIN,
    Look,
    Standing,
    Stop,
    choose_round_length,
    is_final,
    next_look,
    power_hint,
)
from pytest_kts.sequential import (
    Check,
    SequentialTest,
    _norm_sf,
    evaluate,
    first_decisive_n,
    group_sequential_boundaries,
    plan_looks,
)
from pytest_kts.stats import min_samples


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0.8, 0.99),
    st.lists(st.integers(1, 400), min_size=1, max_size=6),
    st.floats(0.5, 4.0),
    st.integers(100, 20_000),
)
def test_spending_never_exceeds_the_budget_and_a_final_look_spends_all(
    confidence: float, steps: list[int], rho: float, n_max: int
) -> None:
    test = SequentialTest(confidence, rho=rho)
    n = 0
    for step in steps:
        n += step * 10
        level = test.level(n, n_max)
        assert 0.0 <= level < 1.0
        assert test.spent_total <= test.alpha * (1 + 1e-12)
    assert all(b >= a for a, b in zip(test.spent, test.spent[1:], strict=False))  # never un-spent
    test.level(n + 1, n_max, final=True)
    assert test.spent_total == pytest.approx(test.alpha)
    assert test.exhausted


def test_a_look_needs_new_samples_and_arguments_are_checked() -> None:
    test = SequentialTest()
    test.level(100, 1000)
    with pytest.raises(ValueError, match="new samples"):
        test.level(100, 1000)
    with pytest.raises(ValueError):
        SequentialTest(confidence=1.0)
    with pytest.raises(ValueError):
        SequentialTest(rho=0.0)


def test_norm_sf_matches_scipy() -> None:
    x = np.linspace(-7, 9, 200)
    assert np.allclose(_norm_sf(x), sps.norm.sf(x), rtol=2e-7, atol=1e-300)


def test_one_look_boundary_is_the_normal_quantile() -> None:
    assert group_sequential_boundaries(np.array([0.025]))[0] == pytest.approx(1.959964, abs=1e-5)
    assert group_sequential_boundaries(np.array([0.0, 0.025]))[0] == math.inf
    with pytest.raises(ValueError, match="increasing"):
        group_sequential_boundaries(np.array([0.01, 0.01]), np.array([2.0, 1.0]))


def test_known_boundaries_for_32_equal_looks() -> None:
    # Equal steps, power spending rho = 2: the classical design (against a 801-point scipy
    # recursion: 4.061 at look 1, 2.757 at 16, 2.243 at 32).
    spent = 0.05 * (np.arange(1, 33) / 32) ** 2
    z = group_sequential_boundaries(np.diff(np.r_[0.0, spent]) / 2)
    assert z[0] == pytest.approx(4.061, abs=0.01)
    assert z[15] == pytest.approx(2.757, abs=0.01)
    assert z[31] == pytest.approx(2.243, abs=0.01)


def test_information_scale_does_not_matter() -> None:
    inc = np.array([0.002, 0.005, 0.018])
    a = group_sequential_boundaries(inc, np.array([1.0, 2.0, 4.7]))
    b = group_sequential_boundaries(inc, np.array([600.0, 1200.0, 2820.0]))
    assert np.allclose(a, b, atol=2e-3)


@pytest.mark.parametrize(
    "info", [(680, 1360, 3200), (400, 500, 2000, 2100), (550, 1100, 2200, 4400, 8800)]
)
def test_unequal_looks_hold_the_error_rate_by_monte_carlo(info: tuple[int, ...]) -> None:
    test = SequentialTest(0.95)
    levels = [test.level(n, info[-1], final=n == info[-1]) for n in info]
    z = sps.norm.isf(np.array(levels) / 2)
    rng = np.random.default_rng(len(info))
    steps = np.diff(np.r_[0, info]).astype(float)
    paths = np.cumsum(rng.standard_normal((100_000, len(info))) * np.sqrt(steps), axis=1)
    crossed = np.mean((paths / np.sqrt(info) >= z).any(axis=1))
    # One-sided budget 0.025 over all looks; Monte Carlo sd is 0.0005.
    assert crossed == pytest.approx(0.025, abs=0.0025)
    # Each later look's own level is above its share of the spending: the looks share data.
    assert levels[-1] > test.spent[-1] - test.spent[-2]


def test_a_shrunk_budget_is_replanned_and_the_final_look_spends_the_rest() -> None:
    test = SequentialTest(0.95, rho=2.0)
    first = test.level(700, 3200)
    assert first == pytest.approx(0.05 * (700 / 3200) ** 2)
    # The time budget turned out shorter: the next look is the last, at 1100 samples.
    last = test.level(1100, 1100, final=True)
    assert test.spent_total == pytest.approx(0.05)
    assert 0.04 < last < 0.05  # most of the budget, a little less than all of it


def test_the_first_look_comes_no_earlier_than_its_own_floor() -> None:
    for n_max in (400, 800, 1440, 3200, 10_000):
        for rho in (1.0, 2.0):
            first = first_decisive_n(99, 0.95, n_max, rho=rho)
            assert first is not None
            level = 0.05 if first >= n_max else 0.05 * (first / n_max) ** rho
            assert first >= min_samples(99, 1 - level / 2)
            # ... and no later than needed: one sample fewer would be below its floor.
            below = 0.05 * ((first - 1) / n_max) ** rho
            assert first - 1 < min_samples(99, 1 - below / 2)
    assert first_decisive_n(99, 0.95, 300) is None  # 368 is the least any p99 claim needs


def test_look_plans_grow_geometrically_to_the_budget() -> None:
    looks = plan_looks(99, 0.95, 100, 3200)
    assert looks[-1] == 3200 and looks == sorted(looks) and len(looks) <= 4
    assert looks[0] == first_decisive_n(99, 0.95, 3200)
    assert all(b / a <= 2.5 for a, b in itertools.pairwise(looks))
    # Trimming and clustering (theta) push the first look later.
    assert plan_looks(99, 0.95, 100, 3200, theta=0.7)[0] > looks[0]
    # A budget below any floor gets one look, which will say what is missing.
    assert plan_looks(99, 0.95, 100, 300) == [300]
    assert plan_looks(99, 0.95, 500, 400) == [400]


def _series(rng: np.random.Generator, rounds: int, r: int, scale: float = 1.0) -> np.ndarray:
    return scale * rng.lognormal(0.0, 0.25, rounds * r)


def test_evaluate_uses_the_looks_level() -> None:
    rng = np.random.default_rng(1)
    check = Check("fft", 99.0, 1.3)
    solo, shared = _series(rng, 4, 500), _series(rng, 4, 500, 2.0)
    seg = np.repeat(np.arange(4), 500)
    df = evaluate(check, solo, shared, solo_segments=seg, shared_segments=seg, level=0.04)
    assert df.alpha == pytest.approx(0.04)
    assert df.verdict(check.threshold) == "fail"
    tight = evaluate(check, solo, shared, solo_segments=seg, shared_segments=seg, level=0.001)
    assert tight.ci[0] < df.ci[0]  # a small level widens the interval
    spent = evaluate(check, solo, shared, solo_segments=seg, shared_segments=seg, level=0.0)
    assert spent.verdict(1.3) == "inconclusive" and "no error budget" in (spent.reason or "")


def test_a_clear_regression_fails_once_the_solo_floor_is_met() -> None:
    # 450 solo samples clear the floor at level 0.02 (one-sided 0.99 needs 459 ... no: 0.01
    # two-sided needs 528); the shared phase's clustering does not matter for a fail.
    rng = np.random.default_rng(3)
    check = Check("fft", 99.0, 1.3)
    solo = _series(rng, 1, 600)
    shared = _series(rng, 1, 600, 5.0)
    df = evaluate(check, solo, shared, solo_segments=None, shared_segments=None, level=0.05)
    assert df.verdict(1.3) == "fail"
    # 1200 shared samples: enough exceedances that the pass side has its floor too, so the
    # reason is about the solo phase alone.
    long_shared = _series(rng, 1, 1200, 5.0)
    short_solo = evaluate(
        check, solo[:200], long_shared, solo_segments=None, shared_segments=None, level=0.05
    )
    # Too few solo samples for an upper bound on the solo p99: no lower bound for DF.
    assert short_solo.ci[0] == 0.0 and short_solo.verdict(1.3) == "inconclusive"
    assert "a fail needs about" in (short_solo.reason or "")


def test_round_length_pays_for_its_phase_switches() -> None:
    common = {"n_first": 800, "phases_per_round": 2, "warmup_per_round": 5.0, "level": 0.012}
    slow = choose_round_length(seconds_per_pair=2 / 48, phase_overhead_s=0.15, **common)
    fast = choose_round_length(seconds_per_pair=2 / 5000, phase_overhead_s=0.15, **common)
    free = choose_round_length(seconds_per_pair=2 / 48, phase_overhead_s=0.0, **common)
    # Phase switches cost more next to fast iterations: fewer, longer rounds.
    assert fast > slow
    # With free switches the round is as short as MSER allows: the most round pairs.
    assert free == ROUND_MIN
    # At least two round pairs at the first look, whatever it costs.
    assert 800 // fast >= 2
    assert choose_round_length(seconds_per_pair=1.0, phase_overhead_s=1.0, **common) <= 400


def _standing(**kw: object) -> Standing:
    base: dict[str, object] = {
        "n_now": 100, "n_reachable": 3200, "n_cap": 3200, "planned": (), "p": 99.0,
        "confidence": 0.95, "theta": 0.6,
    }  # fmt: skip
    base.update(kw)
    return Standing(**base)  # type: ignore[arg-type]


def test_the_look_planner_is_a_pure_function_of_where_the_run_stands() -> None:
    first = next_look(_standing())
    assert isinstance(first, Look) and not first.final
    assert first.plan == tuple(plan_looks(99.0, 0.95, 100, 3200, theta=0.6))
    assert first.plan[-1] == 3200
    # A plan in hand is kept, clipped to what the budget now reaches.
    later = next_look(_standing(n_now=first.target, planned=first.plan[1:], n_reachable=2000))
    assert isinstance(later, Look) and later.plan[-1] == 2000
    assert later.final == (later.target >= 2000)
    # A look that fell short of its floor re-plans from the clustering it measured.
    replanned = next_look(
        _standing(n_now=first.target, planned=first.plan[1:], short_of_floor=True, theta=0.5)
    )
    assert isinstance(replanned, Look) and replanned.target < first.plan[1]
    # Nothing more can be measured: stop, and say which budget ran out.
    stop = next_look(_standing(n_now=3200, n_reachable=3200))
    assert isinstance(stop, Stop) and "3200 iterations" in stop.reason
    assert isinstance(next_look(_standing(n_now=900, n_reachable=900)), Stop)
    # The look about to be judged is final when it was planned so, or little is left after it.
    assert is_final(True, 500, 3200) and is_final(False, 3100, 3200)
    assert not is_final(False, 1000, 3200)


def _h200_undecided() -> Evidence:
    """The issue's H200 case: an interval [0.90, 1.31] at the last look, against 1.3.

    1800 samples a phase: at 900 a pass's upper end is open until about ten exceedances have
    shown how the tail clusters (``evidence.upper_dispersion``), and the case needs both ends.
    """
    rng = np.random.default_rng(9)
    solo = rng.lognormal(0, 0.4, 1800)
    shared = 1.12 * rng.lognormal(0, 0.4, 1800)
    seg = np.repeat(np.arange(18), 100)
    df = evaluate(
        Check("fft", 99.0, 1.3), solo, shared, solo_segments=seg, shared_segments=seg, level=0.03
    )
    return df.evidence


def test_power_hint_is_never_zero_more_and_says_what_limits() -> None:
    ev = _h200_undecided()
    lo, hi = ev.ci
    assert 0.85 < lo < 1.3 < hi < 1.45  # [1.01, 1.35]: undecided, as on the H200 ([0.90, 1.31])
    hint = power_hint(ev, 1.3, budget_spent=True, n_budget=1800, round_length=100)
    assert not re.search(r"\babout 0 more", hint)
    # The budget is spent: what a fresh run would need, in samples per phase.
    assert hint.startswith("this run's error budget is spent; a fresh run would need about ")
    fresh = int(hint.split("about ")[1].split()[0])
    assert fresh >= 368
    # With budget left, the hint counts more samples and says what this budget can decide.
    more = power_hint(ev, 1.3, budget_spent=False, n_budget=1800, round_length=100)
    assert not re.search(r"\babout 0 more", more) and "could decide a pass against" in more
    # The estimate on the threshold: no sample count decides it, and it says so.
    at = power_hint(ev, ev.estimate, budget_spent=False, n_budget=1800, round_length=100)
    assert "sits at the threshold" in at and "no sample count" in at
    # Drift-limited evidence says that more rounds, not longer ones, narrow it.
    drift = dataclasses.replace(ev, limited_by="drift")
    assert "more rounds narrow it" in power_hint(
        drift, 1.3, budget_spent=False, n_budget=1800, round_length=100
    )


def test_power_hint_projects_the_samples_a_threshold_far_away_needs() -> None:
    ev = _h200_undecided()
    near = power_hint(ev, 1.3, budget_spent=True, n_budget=1800, round_length=100)
    far = power_hint(ev, 2.0, budget_spent=True, n_budget=1800, round_length=100)
    n_near = int(near.split("about ")[1].split()[0])
    n_far = int(far.split("about ")[1].split()[0])
    assert n_far < n_near  # a threshold far from the estimate needs fewer samples


def test_sequential_aa_rarely_fails() -> None:
    # A/A against threshold 1.0 (truth on the boundary), looks at 600, 1200, 2400 iid samples:
    # a false fail at any look should happen <= 2.5% of the time. 60 runs, fixed seed.
    rng = np.random.default_rng(2)
    check = Check("fft", 99.0, 1.0)
    fails = 0
    for _ in range(60):
        test = SequentialTest(0.95)
        solo, shared = _series(rng, 1, 2400), _series(rng, 1, 2400)
        for n in (600, 1200, 2400):
            df = evaluate(
                check,
                solo[:n],
                shared[:n],
                solo_segments=None,
                shared_segments=None,
                level=test.level(n, 2400),
            )
            v = df.verdict(check.threshold)
            if v != "inconclusive":
                fails += v == "fail"
                break
    assert fails <= 4  # P(>= 5 of 60 at 2.5%) = 0.02; a broken spending fails far more


def test_power_hint_below_the_floor_says_what_a_fresh_run_needs() -> None:
    # 80 samples per phase: no p99 bound at all, so there is no spread to project from. The
    # hint gives the floor in raw samples (never "a pass against inf", never "0 more").
    rng = np.random.default_rng(11)
    solo, shared = rng.lognormal(0, 0.3, 80), 1.5 * rng.lognormal(0, 0.3, 80)
    seg = np.repeat(np.arange(4), 20)
    ev = evaluate(
        Check("fft", 99.0, 1.0), solo, shared, solo_segments=seg, shared_segments=seg, level=0.05
    ).evidence
    assert ev.ci == (0.0, math.inf)
    hint = power_hint(
        ev, 1.0, budget_spent=False, n_budget=80, round_length=20, seconds_per_sample=0.01
    )
    assert "a fresh run needs at least" in hint and "s of phases" in hint
    raw = int(hint.split("at least ")[1].split()[0])
    assert raw >= 368  # the floor, in raw samples at this tail's dispersion
    assert "inf" not in hint and not re.search(r"\babout 0 more", hint)
