"""pytest_kts.sequential: alpha spending, group-sequential boundaries, evaluate()."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from pytest_kts.sequential import (
    Check,
    SequentialPlan,
    _norm_sf,
    evaluate,
    group_sequential_boundaries,
)


@settings(max_examples=80, deadline=None)
@given(
    st.floats(0.5, 0.999),
    st.integers(1, 60),
    st.floats(0.5, 4.0),
    st.sampled_from(["power", "equal"]),
    st.data(),
)
def test_spending_never_exceeds_the_budget(
    confidence: float, max_looks: int, rho: float, spending: str, data: st.DataObject
) -> None:
    first = data.draw(st.integers(1, max_looks))
    plan = SequentialPlan(confidence, max_looks, spending=spending, rho=rho, first_look=first)
    spent = [plan.alpha_for_look(k) for k in range(1, max_looks + 3)]
    assert all(a >= 0 for a in spent)
    assert math.fsum(spent) <= (1 - confidence) * (1 + 1e-12)
    assert math.fsum(spent) == pytest.approx(1 - confidence)  # and all of it is used
    assert all(a == 0 for a in spent[: first - 1])  # nothing before the first look
    assert spent[max_looks] == spent[max_looks + 1] == 0  # nothing past the last


def test_open_ended_spending_converges_to_the_budget() -> None:
    plan = SequentialPlan(0.95)
    assert plan.alpha_for_look(1) == pytest.approx(0.025)  # alpha / (1 * 2)
    assert plan.spent(1000) == pytest.approx(0.05 * 1000 / 1001)
    assert plan.spent(10**5) < 0.05
    assert plan.boundary == "union"  # no information fraction without max_looks
    assert plan.level_for_look(3) == plan.alpha_for_look(3)


def test_plan_arguments_are_checked() -> None:
    for kwargs in (
        {"confidence": 1.0},
        {"max_looks": 0},
        {"spending": "fast"},
        {"rho": 0.0},
        {"max_looks": 3, "first_look": 4},
        {"boundary": "pocock"},
    ):
        with pytest.raises(ValueError):
            SequentialPlan(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SequentialPlan().alpha_for_look(0)


def test_norm_sf_matches_scipy() -> None:
    x = np.linspace(-7, 9, 200)
    assert np.allclose(_norm_sf(x), sps.norm.sf(x), rtol=2e-7, atol=1e-300)


def test_one_look_boundary_is_the_normal_quantile() -> None:
    assert group_sequential_boundaries(np.array([0.025]))[0] == pytest.approx(1.959964, abs=1e-5)
    assert group_sequential_boundaries(np.array([0.0, 0.025]))[0] == math.inf


def test_known_boundaries_for_32_looks() -> None:
    plan = SequentialPlan(0.95, 32, rho=2.0)
    z = sps.norm.isf(np.array([plan.level_for_look(k) for k in range(1, 33)]) / 2)
    # Against a 801-point scipy recursion: 4.061 at look 1, 2.757 at 16, 2.243 at 32.
    assert z[0] == pytest.approx(4.061, abs=0.01)
    assert z[15] == pytest.approx(2.757, abs=0.01)
    assert z[31] == pytest.approx(2.243, abs=0.01)
    # The union bound would need z = 2.96 at the last look.
    union = SequentialPlan(0.95, 32, rho=2.0, boundary="union")
    assert sps.norm.isf(union.level_for_look(32) / 2) == pytest.approx(2.960, abs=0.01)


@pytest.mark.parametrize(("looks", "rho"), [(8, 2.0), (16, 1.0), (12, 3.0)])
def test_boundaries_hold_the_error_rate_by_monte_carlo(looks: int, rho: float) -> None:
    plan = SequentialPlan(0.95, looks, rho=rho)
    z = sps.norm.isf(np.array([plan.level_for_look(k) for k in range(1, looks + 1)]) / 2)
    rng = np.random.default_rng(looks)
    paths = np.cumsum(rng.standard_normal((100_000, looks)), axis=1) / np.sqrt(
        np.arange(1, looks + 1)
    )
    crossed = np.mean((paths >= z).any(axis=1))
    # One-sided budget 0.025; Monte Carlo sd is 0.0005.
    assert crossed == pytest.approx(0.025, abs=0.0025)
    # While each look's own level is above its spending (the gain over the union bound).
    assert plan.level_for_look(looks) > plan.alpha_for_look(looks)


def _series(rng: np.random.Generator, rounds: int, r: int, scale: float = 1.0) -> np.ndarray:
    return scale * rng.lognormal(0.0, 0.25, rounds * r)


def test_evaluate_uses_the_looks_level() -> None:
    rng = np.random.default_rng(1)
    check = Check("fft", 99.0, 1.3)
    plan = SequentialPlan(0.95, max_looks=10)
    solo, shared = _series(rng, 10, 200), _series(rng, 10, 200, 2.0)
    seg = np.repeat(np.arange(10), 200)
    df = evaluate(check, solo, shared, solo_segments=seg, shared_segments=seg, plan=plan, look=10)
    assert df.alpha == pytest.approx(plan.level_for_look(10))
    assert df.confidence == 0.95
    assert df.verdict(check.threshold) == "fail"
    assert "sequential look 10 of 10" in df.method
    early = evaluate(check, solo, shared, solo_segments=seg, shared_segments=seg, plan=plan, look=1)
    assert early.ci[0] < df.ci[0]  # a tiny early level widens the interval
    late = evaluate(check, solo, shared, solo_segments=seg, shared_segments=seg, plan=plan, look=11)
    assert late.verdict(1.3) == "inconclusive"
    assert "past the plan's last look" in (late.reason or "")


def test_sequential_aa_rarely_fails() -> None:
    # A/A against threshold 1.0 (truth on the boundary), 10 looks of 300 iid samples:
    # a false fail at any look should happen <= 2.5% of the time. 40 runs, fixed seed.
    rng = np.random.default_rng(2)
    check = Check("fft", 99.0, 1.0)
    fails = 0
    for _ in range(40):
        plan = SequentialPlan(0.95, max_looks=10)
        solo, shared = _series(rng, 10, 300), _series(rng, 10, 300)
        for look in range(4, 11):  # below 4 rounds the floor blocks any verdict
            n = look * 300
            seg = np.repeat(np.arange(look), 300)
            df = evaluate(
                check,
                solo[:n],
                shared[:n],
                solo_segments=seg,
                shared_segments=seg,
                plan=plan,
                look=look,
                full_interval=False,
            )
            v = df.verdict(check.threshold)
            if v != "inconclusive":
                fails += v == "fail"
                break
    assert fails <= 3  # P(>= 4 of 40 at 2.5%) = 0.07; a broken spending fails far more
