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
    RUN_LENGTH,
    Summary,
    _clusters_above,
    _UnitTail,
    batch_labels,
    chance_dispersion,
    grouped_jackknife_variance,
    leave_one_out_percentiles,
    min_samples,
    norm_ppf,
    percentile,
    summarize,
    t_ppf,
    t_sf,
    tail_clusters,
    tail_halfwidths,
    trim_warmup,
    unit_bootstrap_variance,
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


# -- Student's t ---------------------------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 3, 4.5, 7, 12.7, 29, 200, 1e5])
def test_t_quantiles_and_tails_match_scipy(df: float) -> None:
    for u in (0.9, 0.975, 0.99, 0.9944, 0.9995):
        assert t_ppf(u, df) == pytest.approx(sps.t.ppf(u, df), rel=1e-8)
        assert t_ppf(1 - u, df) == pytest.approx(sps.t.ppf(1 - u, df), rel=1e-8)
    for x in (-3.0, 0.0, 0.7, 2.5, 9.0):
        assert t_sf(x, df) == pytest.approx(sps.t.sf(x, df), rel=1e-8, abs=1e-15)
    assert t_ppf(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        t_sf(1.0, 0)


# -- the tail's clusters --------------------------------------------------------------------------


def test_tail_clusters_counts_runs_within_rounds_only() -> None:
    # 1000 samples at 1, with slow iterations at known places: a run of 4, a run of 3 split
    # by one fast iteration (one cluster: gaps up to the run length join), two singles, and
    # a run that straddles a round boundary (two clusters: rounds are separate runs).
    x = np.ones(1000)
    slow = [100, 101, 102, 103, 300, 301, 303, 500, 700, 498, 499]
    x[slow] = 5.0
    labels = np.repeat([0, 1], 500)  # 498, 499 | 500 straddle the boundary
    tc = tail_clusters(x, labels, 98.9)  # the level is 1: all 11 slow samples exceed it
    assert tc.exceedances == 11
    assert tc.clusters == 5  # {100-103}, {300, 301, 303}, {498, 499}, {500}, {700}
    assert tc.theta == pytest.approx(5 / 11)
    # sum C^2 / sum C, over what the runs rule joins by chance at 11 exceedances in 1000.
    assert tc.inflation == pytest.approx((16 + 9 + 4 + 1 + 1) / 11 / chance_dispersion(0.011))
    # Independent samples: one exceedance in a cluster of its own, nearly always.
    iid = tail_clusters(np.random.default_rng(1).lognormal(size=20000), None, 99)
    assert iid.theta > 0.95 and iid.inflation < 1.1
    flat = tail_clusters(np.ones(50), None, 99)  # nothing above the percentile
    assert (flat.exceedances, flat.theta, flat.inflation) == (0, 1.0, 1.0)


def test_chance_dispersion_is_what_the_runs_rule_gives_independent_samples() -> None:
    rng = np.random.default_rng(4)
    for q, expected in ((0.99, 1.0822), (0.95, 1.4555), (0.5, 31.0)):
        assert chance_dispersion(1 - q) == pytest.approx(expected, rel=1e-3)
        # Simulated: independent indicators, clusters by the runs rule.
        x = rng.random(400_000)
        sizes = _clusters_above(x, np.zeros(x.size), q, RUN_LENGTH)
        measured = float((sizes**2).sum() / sizes.sum())
        assert measured == pytest.approx(expected, rel=0.05)


def test_a_median_of_independent_samples_is_not_called_clustered() -> None:
    # The runs rule joins half the samples into long "clusters" by chance; only clustering
    # beyond that may shrink the effective sample (a p50 DF once had no lower bound at 105
    # independent samples).
    rng = np.random.default_rng(5)
    x = rng.lognormal(0, 0.3, 2000)
    tc = tail_clusters(x, np.repeat(np.arange(20), 100), 50)
    assert tc.inflation < 1.5
    # A level shift inside the series is clustering beyond chance, and is still seen.
    x[:1000] *= 1.5
    assert tail_clusters(x, None, 50).inflation > 5


def test_tail_clusters_see_bursts_that_the_body_does_not_show() -> None:
    # Independent body, slow bursts of 5 consecutive iterations: exceedances of p99 come in
    # runs of 5, so the extremal index is about 1/5 and the count's dispersion about 5.
    rng = np.random.default_rng(2)
    x = rng.lognormal(0, 0.1, 50_000)
    for start in rng.choice(50_000 - 5, 110, replace=False):
        x[start : start + 5] *= 3.0
    tc = tail_clusters(x, None, 99)
    assert tc.theta < 0.3
    assert tc.inflation > 3.5


def test_tail_halfwidths_are_scipys_order_statistic_interval() -> None:
    rng = np.random.default_rng(3)
    x = rng.lognormal(0, 0.3, 2000)
    down, up = tail_halfwidths(x, 99, float(sps.norm.ppf(0.975)))
    q = percentile(x, 99)
    ref = sps.quantile_test(x, q=q, p=0.99).confidence_interval(0.95)
    assert q * math.exp(-down) == pytest.approx(ref.low, rel=1e-12)
    assert q * math.exp(up) == pytest.approx(ref.high, rel=1e-12)
    # Clustering with dispersion F is n / F effective samples: a wider interval.
    down4, up4 = tail_halfwidths(x, 99, 1.96, inflation=4.0)
    assert down4 > down and up4 > up
    # Below LoadGen's floor on n / F samples there is no upper end.
    assert tail_halfwidths(x[:300], 99, 1.96)[1] == math.inf  # 368 needed at 97.5%
    assert tail_halfwidths(x[:1200], 99, 1.96, inflation=4.0)[1] == math.inf
    assert math.isfinite(tail_halfwidths(x[:400], 99, 1.96)[1])
    assert tail_halfwidths(np.r_[0.0, np.ones(500)], 99, 1.96) == (math.inf, math.inf)


# -- rounds as the unit -------------------------------------------------------------------------


@given(
    st.lists(st.floats(0.01, 100.0), min_size=3, max_size=300),
    st.integers(1, 9),
    st.sampled_from([50.0, 90.0, 99.0, 99.9]),
)
@settings(max_examples=150, deadline=None)
def test_leave_one_out_percentiles_match_brute_force(values: list[float], k: int, p: float) -> None:
    x = np.array(values)
    units = np.arange(x.size) % k
    labels = [*range(k), 99]  # 99 holds no sample: its leave-out is the whole percentile
    got = leave_one_out_percentiles(x, units, p, labels)
    for g, label in enumerate(labels):
        rest = x[units != label]
        want = percentile(rest, p) if rest.size else math.nan
        assert got[g] == want or (math.isnan(got[g]) and math.isnan(want))


def test_grouped_jackknife_is_the_textbook_one_for_equal_groups() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal(400)
    groups = np.arange(400) % 20
    # The mean: the delete-a-group jackknife variance is exactly s^2 / g of the group means.
    means = np.array([x[groups == g].mean() for g in range(20)])
    leave = np.array([x[groups != g].mean() for g in range(20)])
    var, dof = grouped_jackknife_variance(x.mean(), leave, np.full(20, 20.0))
    assert var == pytest.approx(means.var(ddof=1) / 20, rel=1e-12)
    assert 10 < dof <= 19  # normal deviations: close to g - 1
    assert grouped_jackknife_variance(1.0, np.array([1.0]), np.array([5.0])) == (math.inf, 0)


def test_grouped_jackknife_degrees_of_freedom_fall_when_one_group_carries_the_spread() -> None:
    leave = np.zeros(30)
    leave[7] = 1.0  # one round holds the only burst
    var, dof = grouped_jackknife_variance(0.0, leave, np.full(30, 100.0))
    assert var > 0
    assert 1.0 <= dof < 2.5  # not 29: one group's worth of information about the spread


def test_grouped_jackknife_unequal_groups_is_the_weighted_one() -> None:
    # Busing et al.: for the mean of unequal groups the weighted jackknife is the usual
    # variance of a ratio estimator; check it against a brute-force formula.
    rng = np.random.default_rng(5)
    sizes = np.array([50, 120, 80, 200, 60, 90])
    data = [rng.standard_normal(m) + 0.1 * k for k, m in enumerate(sizes)]
    allx = np.concatenate(data)
    n, g = allx.size, sizes.size
    leave = np.array([np.concatenate(data[:k] + data[k + 1 :]).mean() for k in range(g)])
    var, _ = grouped_jackknife_variance(allx.mean(), leave, sizes.astype(float))
    h = n / sizes
    pseudo = h * allx.mean() - (h - 1) * leave
    centre = g * allx.mean() - np.sum((1 - sizes / n) * leave)
    assert var == pytest.approx(np.sum((pseudo - centre) ** 2 / (h - 1)) / g, rel=1e-12)


def test_unit_bootstrap_percentile_is_the_percentile_of_the_units_drawn() -> None:
    # Each replicate's weighted percentile equals the nearest-rank percentile of the drawn
    # units' samples concatenated (each unit as often as drawn), including replicates that
    # drop the units holding the tail, whose percentile lies below the top slice searched
    # first.
    rng = np.random.default_rng(11)
    units = np.repeat(np.arange(8), 150)
    x = rng.lognormal(0.0, 0.2, units.size)
    x[units == 3] *= 5.0  # one unit holds nearly the whole tail
    x[units == 6] *= 3.0
    tail = _UnitTail(x, units, list(range(8)), 99.0)
    weights = rng.integers(0, 3, size=(60, 8)).astype(float)
    weights[:20, 3] = weights[:20, 6] = 0.0  # the tail's units left out
    weights[20] = 0.0  # a replicate that draws nothing
    got = tail.quantiles(weights)
    for row, q in zip(weights, got, strict=True):
        if not row.any():
            assert math.isnan(q)
            continue
        drawn = np.concatenate([np.repeat(x[units == g], int(row[g])) for g in range(8)])
        assert q == percentile(drawn, 99.0)


def test_unit_bootstrap_variance_matches_the_sampling_variance() -> None:
    # Independent rounds of i.i.d. samples: the bootstrap's variance of log DF at p99 is close
    # to the spread of log DF over repeated experiments (the delete-one jackknife of a
    # percentile is not: it overstates it).
    rng = np.random.default_rng(12)
    g, m, p = 16, 150, 99.0
    units = np.repeat(np.arange(g), m)

    def experiment() -> tuple[np.ndarray, np.ndarray]:
        return rng.lognormal(0.0, 0.3, g * m), 1.5 * rng.lognormal(0.0, 0.3, g * m)

    truth = np.var(
        [
            np.log(percentile(sh, p) / percentile(so, p))
            for so, sh in (experiment() for _ in range(400))
        ]
    )
    boot = np.mean(
        [
            unit_bootstrap_variance(so, units, sh, units, p, paired=True)
            for so, sh in (experiment() for _ in range(30))
        ]
    )
    assert 0.7 * truth < boot < 1.5 * truth


def test_unit_bootstrap_pairs_cancel_drift_the_two_phases_share() -> None:
    # Each round pair sits at its own level, shared by solo and shared round: drawn as pairs,
    # the level cancels in the ratio; drawn phase by phase it does not.
    rng = np.random.default_rng(13)
    g, m = 12, 200
    units = np.repeat(np.arange(g), m)
    level = np.repeat(rng.lognormal(0.0, 0.4, g), m)
    solo = level * rng.lognormal(0.0, 0.1, g * m)
    shared = 1.3 * level * rng.lognormal(0.0, 0.1, g * m)
    paired = unit_bootstrap_variance(solo, units, shared, units, 99.0, paired=True)
    apart = unit_bootstrap_variance(solo, units, shared, units, 99.0, paired=False)
    assert 0 < paired < apart / 5
    # Deterministic: the same data give the same variance.
    assert paired == unit_bootstrap_variance(solo, units, shared, units, 99.0, paired=True)


def test_unit_bootstrap_needs_two_units() -> None:
    x = np.linspace(1.0, 2.0, 300)
    one = np.zeros(300, dtype=int)
    two = np.arange(300) % 2
    assert unit_bootstrap_variance(x, one, x, one, 99.0, paired=True) == math.inf
    assert unit_bootstrap_variance(x, two, x, one, 99.0, paired=False) == math.inf
    assert math.isfinite(unit_bootstrap_variance(x, two, 2 * x, two, 99.0, paired=True))


def test_batch_labels_cut_long_runs_into_contiguous_batches() -> None:
    labels = np.zeros(1000, dtype=int)
    batches = batch_labels(labels, prefix="s:")
    assert len(set(batches.tolist())) == 20  # at most 20, of at least 50 samples
    assert all(batches[i] == batches[i + 1] or i % 50 == 49 for i in range(999))  # contiguous
    short = batch_labels(np.zeros(120, dtype=int), prefix="")
    assert len(set(short.tolist())) == 2
