"""pytest_kts.sequential: spending over looks at any sample counts, look plans, evaluate()."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from pytest_kts.sequential import (
    Check,
    SequentialTest,
    _norm_sf,
    evaluate,
    first_decisive_n,
    group_sequential_boundaries,
    plan_looks,
    samples_to_decide,
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
    short_solo = evaluate(
        check, solo[:200], shared, solo_segments=None, shared_segments=None, level=0.05
    )
    # Too few solo samples for an upper bound on the solo p99: no lower bound for DF.
    assert short_solo.ci[0] == 0.0 and short_solo.verdict(1.3) == "inconclusive"
    assert "fail verdict needs about" in (short_solo.reason or "")


def test_power_hint_counts_samples_and_refuses_the_threshold_itself() -> None:
    rng = np.random.default_rng(4)
    check = Check("fft", 99.0, 1.3)
    solo, shared = _series(rng, 1, 1000), _series(rng, 1, 1000, 1.25)
    df = evaluate(check, solo, shared, solo_segments=None, shared_segments=None, level=0.05)
    need = samples_to_decide(df, 1.3, 0.95)
    assert need is not None and need > 1000  # undecided now: more are needed
    far = samples_to_decide(df, 3.0, 0.95)
    assert far is not None and far < need  # a threshold far away needs fewer
    assert samples_to_decide(df, df.value, 0.95) is None


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
                full_interval=False,
            )
            v = df.verdict(check.threshold)
            if v != "inconclusive":
                fails += v == "fail"
                break
    assert fails <= 4  # P(>= 5 of 60 at 2.5%) = 0.02; a broken spending fails far more
