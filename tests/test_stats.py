"""pytest_kts.stats: percentile definition, MSER-5, sample floor, dependence estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.signal import lfilter

from pytest_kts.errors import StatisticsError
from pytest_kts.stats import (
    Summary,
    _circular_windows,
    _exceedance_cov,
    block_length,
    bootstrap_percentiles,
    min_samples,
    norm_ppf,
    percentile,
    rank_se_log,
    summarize,
    tail_dependence,
    trim_warmup,
    warmup_length,
)


def ar1(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    e = rng.standard_normal(n)
    e[1:] *= math.sqrt(1 - rho**2)  # stationary from the first sample
    return lfilter([1.0], [1.0, -rho], e)


# -- percentile ---------------------------------------------------------------------------------


def test_percentile_nearest_rank_known_values() -> None:
    x = np.arange(1, 101, dtype=float)
    assert percentile(x, 99) == 99.0
    assert percentile(x, 50) == 50.0
    assert percentile(x, 99.5) == 100.0  # ceil(99.5) = 100
    assert percentile(x, 100) == 100.0
    assert percentile(x, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_percentile_float_noise_does_not_move_the_rank() -> None:
    # 99.9 * 1000 / 100 is 999.0000000000001 in floating point; the rank must stay 999.
    x = np.arange(1, 1001, dtype=float)
    assert percentile(x, 99.9) == 999.0


def test_percentile_ignores_nan_and_rejects_nothing() -> None:
    assert percentile([np.nan, 1.0, 2.0, np.inf], 50) == 1.0
    with pytest.raises(StatisticsError):
        percentile([np.nan, np.nan], 99)
    with pytest.raises(StatisticsError):
        percentile([], 99)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.001, 1e4, allow_nan=False), min_size=1, max_size=300),
    # The percentiles people ask for; for arbitrary floats numpy's own rounding of p*n/100
    # can land one rank away at exact integers, which ours guards against (test above).
    st.sampled_from([0.0, 1.0, 25.0, 50.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0]),
)
def test_percentile_matches_numpy_inverted_cdf(values: list[float], p: float) -> None:
    assert percentile(np.array(values), p) == np.percentile(
        np.array(values), p, method="inverted_cdf"
    )


# -- MSER-5 -------------------------------------------------------------------------------------


def test_warmup_length_finds_a_transient() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 1.0, 500)
    x[:50] += 8.0  # 50 slow iterations at the start
    d = warmup_length(x)
    assert d % 5 == 0
    assert 45 <= d <= 60


def test_warmup_length_edge_cases() -> None:
    assert warmup_length(np.ones(100)) == 0
    assert warmup_length(np.arange(9.0)) == 0  # fewer than two batches
    assert warmup_length(np.array([])) == 0
    # A transient longer than max_fraction cannot be cut past it.
    x = np.r_[np.full(400, 10.0), np.full(100, 1.0)]
    assert warmup_length(x, max_fraction=0.5) <= 250
    with pytest.raises(ValueError):
        warmup_length(np.ones(10), max_fraction=1.0)


def test_trim_warmup_per_segment_and_nan() -> None:
    rng = np.random.default_rng(2)
    rounds = []
    for _ in range(3):
        r = rng.lognormal(0.0, 0.1, 200)
        r[:30] *= 3.0
        rounds.append(r)
    x = np.concatenate(rounds)
    x[5] = np.nan  # unmeasured: dropped, not counted as warmup
    seg = np.repeat([7, 3, 9], 200)  # labels need not be sorted: rounds keep their order
    kept, labels, trimmed = trim_warmup(x, seg)
    assert 3 * 25 <= trimmed <= 3 * 40
    assert kept.size + trimmed == 599
    assert list(dict.fromkeys(labels.tolist())) == [7, 3, 9]
    # Nothing of the slow starts survives.
    assert kept.max() < 2.0 * np.exp(0.5)


def test_trim_warmup_capped_input_ignores_a_single_early_spike() -> None:
    x = np.ones(200) + np.random.default_rng(3).normal(0, 0.01, 200)
    x[12] = 40.0  # one tail spike near the start, no warmup
    _, _, capped = trim_warmup(x)
    _, _, uncapped = trim_warmup(x, cap_percentile=None)
    assert capped == 0
    assert uncapped >= 15  # the reason for the cap: MSER alone cuts away the spike


# -- summary ------------------------------------------------------------------------------------


def test_summarize_values() -> None:
    x = np.arange(1, 1001, dtype=float)
    s = summarize(x, trim=False, busy_seconds=10.0)
    assert isinstance(s, Summary)
    assert (s.n, s.trimmed) == (1000, 0)
    assert (s.p50, s.p95, s.p99, s.p999) == (500.0, 950.0, 990.0, 999.0)
    assert s.mean == pytest.approx(500.5)
    assert s.jitter == pytest.approx(990.0 / 500.0)
    assert s.throughput == pytest.approx(100.0)
    assert math.isnan(summarize(x, trim=False).throughput)


def test_summarize_errors_and_nan() -> None:
    with pytest.raises(StatisticsError, match="no finite"):
        summarize(np.full(10, np.nan))
    with pytest.raises(StatisticsError):
        summarize(np.array([]))
    s = summarize(np.r_[np.nan, np.ones(20)], trim=False)
    assert s.n == 20
    with pytest.raises(ValueError, match="segments"):
        summarize(np.ones(10), segments=np.zeros(9))


# -- sample floor -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "c", "t", "n"),
    [
        (99, 0.99, 0, 459),
        (99, 0.99, 1, 662),
        (99, 0.99, 2, 838),
        (99, 0.95, 0, 299),
        (99, 0.95, 1, 473),
        (90, 0.99, 0, 44),
        (90, 0.99, 1, 64),
        (99.9, 0.99, 0, 4603),
        (99.9, 0.99, 1, 6636),
        (99, 0.975, 0, 368),  # a two-sided 95% CI for p99 needs n >= 368
    ],
)
def test_min_samples_loadgen_values(p: float, c: float, t: int, n: int) -> None:
    assert min_samples(p, c, t) == n


@settings(max_examples=60, deadline=None)
@given(st.floats(50.0, 99.9), st.floats(0.5, 0.999), st.integers(0, 4))
def test_min_samples_is_the_smallest_binomial_n(p: float, c: float, t: int) -> None:
    n = min_samples(p, c, t)
    q = 1 - p / 100
    tail = sps.binom.cdf(t, n, q)
    assert tail <= 1 - c + 1e-9
    if n - 1 > t:
        assert sps.binom.cdf(t, n - 1, q) > 1 - c - 1e-9


def test_min_samples_rejects_bad_arguments() -> None:
    for args in ((100, 0.95), (99, 1.0), (99, 0.0)):
        with pytest.raises(ValueError):
            min_samples(*args)
    with pytest.raises(ValueError):
        min_samples(99, 0.95, -1)


def test_norm_ppf_matches_scipy() -> None:
    for u in (1e-12, 1e-6, 0.001, 0.0125, 0.025, 0.3, 0.5, 0.8, 0.975, 0.999):
        assert norm_ppf(u) == pytest.approx(sps.norm.ppf(u), abs=1e-9)
    assert norm_ppf(0.0) == -math.inf
    assert norm_ppf(1.0) == math.inf


# -- dependence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_block_length_agrees_with_arch(rho: float) -> None:
    arch = pytest.importorskip("arch.bootstrap")
    x = ar1(np.random.default_rng(4), 3000, rho)
    ours = block_length(x)
    theirs = float(arch.optimal_block_length(x)["circular"].iloc[0])
    # Ours runs on ranks (robust to heavy tails) and normalises the autocorrelations properly;
    # arch works on raw values. For Gaussian AR(1) the two should agree closely.
    assert ours == pytest.approx(theirs, rel=0.2)


def test_block_length_iid_and_segments() -> None:
    rng = np.random.default_rng(5)
    assert block_length(rng.standard_normal(2000)) < 3
    # Rounds at very different levels: a series without labels looks strongly dependent,
    # with labels the pairs across a round boundary are not counted... but the level shifts
    # still correlate samples inside a round, so only check that labels never *add* length.
    x = np.concatenate([rng.standard_normal(100) + 5 * k for k in range(10)])
    seg = np.repeat(np.arange(10), 100)
    assert block_length(x, seg) <= block_length(x)
    assert block_length(np.ones(5)) == 1.0


def test_exceedance_cov_matches_bivariate_normal() -> None:
    h = float(sps.norm.ppf(0.99))
    for r in (-0.3, 0.1, 0.5, 0.9, 0.99):
        mvn = sps.multivariate_normal(mean=[0, 0], cov=[[1, r], [r, 1]])
        expected = mvn.cdf([-h, -h]) - 0.01**2  # P(both > h) - P(>h)^2, by symmetry
        assert _exceedance_cov(h, np.array([r]))[0] == pytest.approx(expected, abs=1e-7)


def test_tail_dependence_ar1() -> None:
    rng = np.random.default_rng(6)
    f0, t0 = tail_dependence(rng.standard_normal(5000), None, 99)
    assert f0 < 1.1 and t0 > 0.95
    # Theory for Gaussian AR(1), rho = 0.9, p99: F = 5.86, theta = 0.458 (scipy integration).
    x = np.exp(ar1(rng, 20000, 0.9))
    f9, t9 = tail_dependence(x, None, 99)
    assert 4.5 < f9 < 7.0
    assert 0.38 < t9 < 0.55


def test_rank_se_log_iid_lognormal() -> None:
    rng = np.random.default_rng(7)
    sigma, n = 0.5, 4000
    ses = [rank_se_log(rng.lognormal(0, sigma, n), 99) for _ in range(20)]
    # Asymptotic sd of log p99 for lognormal(sigma): 3.73 sigma / sqrt(n).
    assert np.median(ses) == pytest.approx(3.73 * sigma / math.sqrt(n), rel=0.25)
    assert rank_se_log(rng.lognormal(0, 1, 60), 99) == math.inf  # not far enough into the tail
    assert rank_se_log(np.r_[0.0, np.ones(500)], 99) == math.inf  # log of 0


def test_circular_windows_stay_in_their_segment() -> None:
    labels = np.repeat([0, 1, 2], [5, 30, 12])
    values = np.arange(labels.size, dtype=float)
    windows, start_of = _circular_windows(values, labels, 7)
    for i in range(values.size):
        block = windows[start_of[i]].astype(int)
        assert block[0] == i
        assert np.all(labels[block] == labels[i])  # wraps inside the segment
    # A 5-sample segment with 7-sample blocks repeats itself: 3 4 0 1 2 3 4.
    assert windows[start_of[3]].tolist() == [3, 4, 0, 1, 2, 3, 4]


def test_bootstrap_percentiles_spread_iid() -> None:
    rng = np.random.default_rng(8)
    x = rng.lognormal(0, 0.5, 3000)
    reps = bootstrap_percentiles(x, None, 99, block=1, replicates=1000, rng=rng)
    assert reps.shape == (1000,)
    assert np.std(np.log(reps)) == pytest.approx(3.73 * 0.5 / math.sqrt(3000), rel=0.3)
    with pytest.raises(StatisticsError):
        bootstrap_percentiles(np.array([]), None, 99, block=1, replicates=10, rng=rng)
