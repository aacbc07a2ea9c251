"""Pure statistics on latency samples: warmup trimming, percentiles, summaries, bootstrap.

Everything here is a function of numpy arrays (no I/O, no scipy, no pytest), so the same
numbers come out of a live run, an offline re-judgement of a saved CSV and the tests.
See ``docs/statistics.md`` for the method and the simulations behind each choice.

Conventions
-----------
* Latencies are milliseconds, one value per iteration, in time order.
* ``segments`` is a label per sample (the round it belongs to). Rounds are separate runs of a
  phase: warmup is trimmed per round and bootstrap blocks never straddle two rounds.
* ``nan`` (and other non-finite) entries mean "not measured" and are dropped, never guessed.

One file on purpose: these are the estimators one verdict is built from, each on top of the
ones before it (percentile, warmup trimming, summary, sample floor, block bootstrap, rank
intervals widened for tail dependence); it is long because each carries its derivation in its
docstring, not because it holds several concerns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pytest_kts.errors import StatisticsError

__all__ = [
    "Summary",
    "TailClusters",
    "batch_labels",
    "grouped_jackknife_variance",
    "leave_one_out_percentiles",
    "min_samples",
    "norm_ppf",
    "norm_sf",
    "percentile",
    "summarize",
    "t_ppf",
    "t_sf",
    "tail_clusters",
    "tail_halfwidths",
    "trim_warmup",
    "unit_bootstrap_variance",
    "warmup_length",
]

# MSER-5: White (1997) batches of 5 damp single-sample noise before the truncation search.
_MSER_BATCH = 5
# The most of a round that warmup trimming may remove. MSER's own rule searches the first
# half; our rounds are hundreds to thousands of iterations long, and a start-up transient
# (clocks ramping up, caches) lasts a few dozen. What MSER finds beyond a quarter is drift
# within the round (an idle GPU's clocks falling through a solo phase, say), which trimming
# does not cure and which cost a p99 claim 40% of its samples on an H200 (docs/statistics.md).
WARMUP_MAX_FRACTION = 0.25


def _finite(x: np.ndarray | list[float]) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


# ---------------------------------------------------------------------------------------------
# Percentile: the one definition used everywhere
# ---------------------------------------------------------------------------------------------


def _rank(p: float, n: int) -> int:
    """1-based nearest rank ``ceil(p/100 * n)``, clipped to ``[1, n]``.

    Rounding to 9 decimals first keeps float noise (99.9 * 1000 / 100 = 999.0000000000001)
    from moving the rank by one.
    """
    return min(n, max(1, math.ceil(round(p * n / 100.0, 9))))


def percentile(x: np.ndarray, p: float) -> float:
    """The ``p``-th percentile by the nearest-rank definition (no interpolation).

    ``x_(k)`` with ``k = ceil(p/100 * n)`` on the sorted finite values: the smallest observed
    latency such that at least ``p`` percent of the iterations took no longer. It is the
    definition of HdrHistogram and MLPerf LoadGen, it is always a latency that really
    happened, and it is the order statistic that the binomial sample floor
    (:func:`min_samples`) and the bootstrap reason about. numpy calls it ``inverted_cdf``.
    Non-finite values are ignored; nothing finite left raises :class:`StatisticsError`.
    """
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile p must be in [0, 100], got {p}")
    values = _finite(x)
    if values.size == 0:
        raise StatisticsError("no finite latency samples to take a percentile of")
    k = _rank(p, values.size)
    return float(np.partition(values, k - 1)[k - 1])


# ---------------------------------------------------------------------------------------------
# Warmup (MSER-5)
# ---------------------------------------------------------------------------------------------


def warmup_length(x: np.ndarray, *, max_fraction: float = 0.5) -> int:
    """Samples to drop at the start of one run, by MSER-5 (White 1997).

    The series is cut into batch means of 5; the truncation ``d`` (in batches) minimises
    ``MSER(d) = sum_{j>=d} (Y_j - mean(Y_d..))^2 / (m - d)^2``, the squared standard error of
    the mean of what is kept: dropping a transient lowers the numerator faster than the
    shrinking denominator penalises it. ``d`` is searched over the first ``max_fraction`` of
    the batches only, because near the end of the series the statistic rests on a handful of
    batches and its minimum is noise. Non-finite values are ignored (the count refers to the
    finite samples). Fewer than two batches: nothing is dropped.
    """
    if not 0.0 <= max_fraction < 1.0:
        raise ValueError(f"max_fraction must be in [0, 1), got {max_fraction}")
    values = _finite(x)
    m = values.size // _MSER_BATCH
    if m < 2:
        return 0
    batches = values[: m * _MSER_BATCH].reshape(m, _MSER_BATCH).mean(axis=1)
    batches = batches - batches.mean()  # centring keeps the sums of squares well conditioned
    # Sums over the kept batches j >= d, for every d at once (reverse cumulative sums).
    s1 = np.cumsum(batches[::-1])[::-1]
    s2 = np.cumsum((batches**2)[::-1])[::-1]
    kept = np.arange(m, 0, -1, dtype=np.float64)  # m - d
    mser = (s2 - s1**2 / kept) / kept**2
    d_max = min(math.floor(max_fraction * m), m - 2)
    d = int(np.argmin(mser[: d_max + 1]))
    return d * _MSER_BATCH


def _segment_slices(segments: np.ndarray) -> list[np.ndarray]:
    """Indices of each segment, segments in order of first appearance, time order inside."""
    labels = np.asarray(segments)
    if labels.ndim != 1:
        raise ValueError("segments must be one label per sample (1-D)")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # rounds in the order they ran
    groups = np.argsort(inverse, kind="stable")  # stable: time order kept within a round
    counts = np.bincount(inverse, minlength=first.size)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    return [groups[bounds[g] : bounds[g + 1]] for g in order]


def _as_series(
    x: np.ndarray | list[float], segments: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(x, dtype=np.float64).ravel()
    if segments is None:
        labels = np.zeros(values.size, dtype=np.int64)
    else:
        labels = np.asarray(segments).ravel()
        if labels.size != values.size:
            raise ValueError(
                f"segments has {labels.size} labels for {values.size} samples; "
                "give one round label per sample"
            )
    return values, labels


def _mser_input(values: np.ndarray, cap_percentile: float | None) -> np.ndarray:
    """What MSER-5 looks at: log latency, capped at the phase's ``cap_percentile``.

    A warmup transient is a multiplicative level shift (cold caches, clocks ramping up), so
    it shows on the log scale and survives the cap. A single tail spike (3x the median is
    ordinary on a time-sliced GPU) does not: uncapped, MSER truncates rounds that *start*
    with a spike, which removes tail samples selectively and biased log p99 by -0.03
    (AR(1) rho 0.5, tail-degraded phase) to -0.11 (rho 0.9) in our simulations; with the
    p90 cap the bias was -0.02 and -0.05 (benchmarks/eval_verdicts.py, docs/statistics.md).
    """
    if values.size == 0 or not np.all(values > 0):
        return values
    logs: np.ndarray = np.log(values)
    if cap_percentile is None:
        return logs
    capped: np.ndarray = np.minimum(logs, percentile(logs, cap_percentile))
    return capped


def trim_warmup(
    x: np.ndarray,
    segments: np.ndarray | None = None,
    *,
    max_fraction: float = WARMUP_MAX_FRACTION,
    cap_percentile: float | None = 90.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Finite samples with each segment's warmup removed (MSER-5 per segment).

    MSER-5 runs per segment on log latency capped at the whole phase's ``cap_percentile``
    (see :func:`_mser_input`); ``max_fraction=0`` disables trimming. Returns
    ``(values, labels, trimmed)``: kept values in time order within each segment (segments
    in the order they ran), their segment labels, and how many finite samples were dropped
    as warmup. Non-finite samples are dropped first and not counted as trimmed.
    """
    values, labels = _as_series(x, segments)
    finite = np.isfinite(values)
    values, labels = values[finite], labels[finite]
    if values.size == 0:
        return values, labels, 0
    screened = _mser_input(values, cap_percentile)
    kept_v: list[np.ndarray] = []
    kept_l: list[np.ndarray] = []
    trimmed = 0
    for idx in _segment_slices(labels):
        d = warmup_length(screened[idx], max_fraction=max_fraction) if max_fraction else 0
        trimmed += d
        kept_v.append(values[idx[d:]])
        kept_l.append(labels[idx[d:]])
    return np.concatenate(kept_v), np.concatenate(kept_l), trimmed


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Percentiles of one tenant in one phase, after warmup trimming (nearest-rank)."""

    n: int  # finite samples kept after trimming
    trimmed: int  # finite samples dropped as warmup
    p50: float
    p95: float
    p99: float
    p999: float
    mean: float
    jitter: float  # p99 / p50, the study's tail-spread figure
    throughput: float  # iterations per second of busy wall time, nan if unknown


def summarize(
    x_ms: np.ndarray,
    *,
    segments: np.ndarray | None = None,
    busy_seconds: float | None = None,
    trim: bool = True,
) -> Summary:
    """Summary of one phase. Warmup is detected and trimmed per segment (round).

    ``throughput`` counts every iteration of the phase (warmup and unmeasured ones included,
    since they occupied the GPU) over ``busy_seconds``; nan when that is unknown or zero.
    All-nan (or empty) input raises :class:`StatisticsError`.
    """
    values, labels = _as_series(x_ms, segments)
    if not np.isfinite(values).any():
        raise StatisticsError(
            f"no finite latency samples among {values.size}: the phase produced no measurements"
        )
    cap = WARMUP_MAX_FRACTION if trim else 0.0
    kept, _, trimmed = trim_warmup(values, labels, max_fraction=cap)
    p50, p95, p99, p999 = (percentile(kept, q) for q in (50.0, 95.0, 99.0, 99.9))
    throughput = math.nan
    if busy_seconds is not None and busy_seconds > 0 and math.isfinite(busy_seconds):
        throughput = values.size / busy_seconds
    return Summary(
        n=int(kept.size),
        trimmed=int(trimmed),
        p50=p50,
        p95=p95,
        p99=p99,
        p999=p999,
        mean=float(kept.mean()),
        jitter=p99 / p50 if p50 > 0 else math.nan,
        throughput=throughput,
    )


# ---------------------------------------------------------------------------------------------
# Sample floor (MLPerf LoadGen early stopping)
# ---------------------------------------------------------------------------------------------


def _binom_cdf_upper_tail_ok(n: int, t: int, q: float) -> float:
    """P(Binomial(n, q) <= t), summed in log space (n in the tens of thousands is fine)."""
    ks = np.arange(t + 1, dtype=np.float64)
    lg = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in ks])
    logs = lg + ks * math.log(q) + (n - ks) * math.log1p(-q)
    top = logs.max()
    return float(math.exp(top) * np.exp(logs - top).sum())


def min_samples(p: float, confidence: float, exceedances: int = 0) -> int:
    """Fewest samples that can show the ``p``-th percentile is below the ``t``-th largest value.

    MLPerf LoadGen's early-stopping floor: the smallest ``n`` such that, were the true
    percentile *above* the bound, seeing at most ``t = exceedances`` samples over it would
    have probability ``P(Binomial(n, 1 - p/100) <= t) <= 1 - confidence``. For ``t = 0`` this
    is ``ceil(ln(1 - c) / ln(p/100))``: p99 at 0.99 needs 459, at 0.95 needs 299. Below the
    floor, no data can bound the percentile from above at that confidence, so no ratio
    involving it can be claimed either.
    """
    if not 0.0 < p < 100.0:
        raise ValueError(f"p must be in (0, 100), got {p}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if exceedances < 0:
        raise ValueError("exceedances must be >= 0")
    q = p / 100.0
    if exceedances == 0:
        # Rounding guards the exact cases (c = 1 - q**k) against float noise in the logs.
        return max(1, math.ceil(round(math.log1p(-confidence) / math.log(q), 9)))
    target = 1.0 - confidence
    t = exceedances
    lo = t + 1
    hi = lo
    while _binom_cdf_upper_tail_ok(hi, t, 1.0 - q) > target:  # the tail probability falls in n
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if _binom_cdf_upper_tail_ok(mid, t, 1.0 - q) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------------------------------------
# Normal quantile (no scipy at runtime)
# ---------------------------------------------------------------------------------------------

# Acklam's rational approximation (relative error 1.15e-9), then one Halley step on erfc.
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
      1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
      6.680131188771972e01, -1.328068155288572e01)  # fmt: skip
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
      -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
      3.754408661907416e00)  # fmt: skip


def norm_ppf(u: float) -> float:
    """Inverse standard normal CDF, accurate to ~1e-15 on (0, 1)."""
    if not 0.0 < u < 1.0:
        if u == 0.0:
            return -math.inf
        if u == 1.0:
            return math.inf
        raise ValueError(f"probability must be in [0, 1], got {u}")
    lo = 0.02425
    if u < lo:
        q = math.sqrt(-2 * math.log(u))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1
        )
    elif u <= 1 - lo:
        q = u - 0.5
        r = q * q
        x = (
            (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5])
            * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1)
        )
    else:
        q = math.sqrt(-2 * math.log1p(-u))
        x = -(((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1
        )
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - u
    step = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - step / (1 + x * step / 2)


def norm_sf(x: float) -> float:
    """Upper normal tail ``1 - Phi(x)``."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


# ---------------------------------------------------------------------------------------------
# Student's t (no scipy at runtime): the critical values of intervals whose variance is
# estimated from a few round pairs
# ---------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, NR 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with ``df`` degrees of freedom (``inf``: the normal)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df) or df > 1e7:
        return norm_sf(t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(u: float, df: float) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom (``inf``: the normal's).

    Bisection on :func:`t_sf` in the log of the tail probability, from the normal quantile's
    neighbourhood; accurate to about 1e-10 in the tail probability. t_ppf(0.975, 9) = 2.2622.
    """
    if not 0.0 < u < 1.0:
        if u in (0.0, 1.0):
            return math.inf if u == 1.0 else -math.inf
        raise ValueError(f"probability must be in [0, 1], got {u}")
    if math.isinf(df) or df > 1e7:
        return norm_ppf(u)
    if u < 0.5:
        return -t_ppf(1.0 - u, df)
    target = 1.0 - u
    lo, hi = 0.0, max(2.0 * norm_ppf(u), 1.0)
    while t_sf(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------
# Dependence where the verdict looks: how the exceedances of the percentile cluster
# ---------------------------------------------------------------------------------------------

# Exceedances separated by at most this many iterations below the level are one cluster (the
# runs estimator's run length): a co-tenant's time slice or a queue that drains over a few
# iterations is one event, not several.
RUN_LENGTH = 3


@dataclass(frozen=True)
class TailClusters:
    """How the samples above a phase's percentile cluster in time (within rounds only).

    ``theta = clusters / exceedances`` is the runs estimate of the extremal index: with
    ``theta < 1`` a run of slow iterations is one observation of the tail, so ``n theta``
    counts the independent samples a percentile bound rests on. ``inflation`` is the variance
    inflation of the exceedance count, ``sum C^2 / sum C`` over cluster sizes ``C`` (a
    compound-Poisson count's index of dispersion): the sample percentile's variance is
    ``p (1-p) inflation / (n f(q)^2)`` (Bahadur), so ``n / inflation`` is its effective size.
    """

    level: float  # the latency whose exceedances are counted
    exceedances: int
    clusters: int
    theta: float
    inflation: float


def _clusters_above(values: np.ndarray, labels: np.ndarray, level: float, run: int) -> np.ndarray:
    above = np.flatnonzero(values > level)
    if above.size == 0:
        return np.zeros(0)
    new_segment = labels[above[1:]] != labels[above[:-1]]
    starts = np.r_[True, (np.diff(above) > run + 1) | new_segment]
    sizes: np.ndarray = np.diff(np.r_[np.flatnonzero(starts), above.size]).astype(np.float64)
    return sizes


def chance_dispersion(fraction: float, run: int = RUN_LENGTH) -> float:
    """``sum C^2 / sum C`` that the runs rule gives *independent* exceedances by chance.

    With each sample above the level with probability ``fraction``, a cluster goes on past
    an exceedance unless the next ``run + 1`` samples all stay below (a gap of ``run`` joins),
    so cluster sizes are geometric with stopping probability ``s = (1 - fraction)^(run + 1)``
    and ``E[C^2] / E[C] = (2 - s) / s``: 1.08 at p99, 1.46 at p95, 31 at p50. The dispersion
    a verdict uses is the measured one over this, so only clustering beyond chance shrinks
    the effective sample (a median's exceedances are half the samples, and the runs rule
    alone would join them into a few long "bursts" of independent samples).
    """
    s = (1.0 - min(max(fraction, 0.0), 1.0)) ** (max(run, 0) + 1)
    if s <= 0:
        return math.inf
    return (2.0 - s) / s


# The clustering is read at the percentile and at levels up to this many binomial sds of
# rank below it: the interval around a percentile spans those ranks, and a tail whose slow
# mode sits right at the percentile (a co-tenant that hits 1-2% of iterations in runs) shows
# its clustering just below the sample percentile whenever the sample holds few of its runs.
_BAND_SDS = 0


def tail_clusters(
    x: np.ndarray, segments: np.ndarray | None, p: float, *, run: int = RUN_LENGTH
) -> TailClusters:
    """Clusters of the samples above the ``p``-th sample percentile of ``x``.

    ``x`` must be finite and grouped by segment in time order (as :func:`trim_warmup` returns
    it); a cluster never spans two segments (rounds are separate runs). ``exceedances`` and
    ``clusters`` are counted at the percentile; ``theta`` (smallest) and ``inflation``
    (largest) over a band of levels from the percentile down to ``_BAND_SDS`` binomial sds of
    rank below it, the ranks an interval for the percentile spans. With no exceedance at all,
    ``theta`` and ``inflation`` are 1.
    """
    values, labels = _as_series(x, segments)
    n = values.size
    if n == 0:
        raise StatisticsError("no samples to find the tail's clusters in")
    level = percentile(values, p)
    at_level = _clusters_above(values, labels, level, run)
    exceed = int(at_level.sum())
    if exceed == 0:
        return TailClusters(level, 0, 0, 1.0, 1.0)
    q = p / 100.0
    sd = math.sqrt(n * q * (1 - q))
    ordered = np.sort(values)
    theta = at_level.size / exceed
    inflation = float((at_level**2).sum() / exceed) / chance_dispersion(exceed / n, run)
    for j in range(1, _BAND_SDS + 1):
        rank = math.floor(n * q - j * sd)
        if rank < 1:
            break
        sizes = _clusters_above(values, labels, float(ordered[rank - 1]), run)
        if sizes.size:
            theta = min(theta, sizes.size / float(sizes.sum()))
            chance = chance_dispersion(float(sizes.sum()) / n, run)
            inflation = max(inflation, float((sizes**2).sum() / sizes.sum()) / chance)
    return TailClusters(
        level=level,
        exceedances=exceed,
        clusters=int(at_level.size),
        theta=float(theta),
        inflation=float(max(inflation, 1.0)),
    )


def _binom_cdf(k: float, n: float, q: float) -> float:
    """``P(Bin(n, q) <= k)`` for a real ``n`` (the regularised incomplete beta)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return _betainc(n - k, k + 1.0, 1.0 - q)


def _binom_rank(n: float, q: float, prob: float) -> int:
    """Smallest integer ``k`` in ``[0, ceil(n)]`` with ``P(Bin(n, q) <= k) >= prob``."""
    lo, hi = 0, math.ceil(n)
    while lo < hi:
        mid = (lo + hi) // 2
        if _binom_cdf(mid, n, q) >= prob:
            hi = mid
        else:
            lo = mid + 1
    return lo


def tail_halfwidths(
    x: np.ndarray, p: float, critical: float, inflation: float = 1.0
) -> tuple[float, float]:
    """How far below and above its sample value the ``p``-th percentile may lie, in log ms.

    The distribution-free order-statistic interval (binomial ranks, as
    ``scipy.stats.quantile_test`` gives them) at one-sided level ``1 - Phi(critical)``, on
    ``n / F`` effective samples: a tail that comes in clusters with count dispersion ``F``
    carries the information of ``n / F`` independent samples. Taken at the level itself,
    not as a standard error scaled afterwards: a tail whose slow mode starts just above the
    sample percentile (a co-tenant that hits 1-2% of iterations, in runs) is flat one sd up
    and steep two sds up, and only the second says how far the percentile may really be.
    Returns ``(down, up)``: log distances from the nearest-rank percentile to the bounding
    order statistics (fractional ranks interpolate, here only); ``up`` is ``inf`` when the
    upper rank lies beyond the largest sample (below LoadGen's floor on ``n / F`` samples).
    """
    values = _finite(x)
    n = values.size
    if n < 2 or np.any(values <= 0) or not critical < math.inf:
        return math.inf, math.inf
    q = p / 100.0
    beta = norm_sf(critical)
    n_eff = n / max(inflation, 1.0)
    logs = np.log(np.sort(values))
    centre = float(logs[_rank(p, n) - 1])
    ranks = np.arange(1, n + 1, dtype=np.float64)
    # Lower: the largest l with P(Bin < l) <= beta; upper: the smallest u with P(Bin < u) >=
    # 1 - beta (ranks in the effective sample, scaled back to the n samples).
    lower = _binom_rank(n_eff, q, beta)  # P(Bin <= lower) >= beta: rank ``lower`` is below
    low_rank = max(1.0, lower * n / n_eff)
    down = max(centre - float(np.interp(low_rank, ranks, logs)), 0.0)
    upper = _binom_rank(n_eff, q, 1.0 - beta) + 1
    if upper > n_eff:
        return down, math.inf
    up_rank = min(float(n), upper * n / n_eff)
    up = max(float(np.interp(up_rank, ranks, logs)) - centre, 0.0)
    return down, up


# ---------------------------------------------------------------------------------------------
# Rounds as the unit: leave-one-out percentiles and the grouped jackknife
# ---------------------------------------------------------------------------------------------

# A phase recorded as one long run has no rounds to leave out: it is cut into contiguous
# batches instead, each long against a burst (bursts last a few to a few dozen iterations).
BATCH_MIN = 50
BATCH_MAX_COUNT = 20


def batch_labels(segments: np.ndarray, *, prefix: str) -> np.ndarray:
    """Labels of contiguous batches of at least ``BATCH_MIN`` samples within each segment.

    For a phase with a single round: between ``2`` and ``BATCH_MAX_COUNT`` batches in all
    (fewer, longer batches for short phases). ``segments`` are grouped in time order.
    """
    labels = np.asarray(segments)
    n = labels.size
    count = int(min(BATCH_MAX_COUNT, max(2, n // BATCH_MIN)))
    size = max(1, -(-n // count))
    out = np.empty(n, dtype=object)
    for k, idx in enumerate(_segment_slices(labels)):
        for j in range(0, idx.size, size):
            out[idx[j : j + size]] = f"{prefix}{k}.{j // size}"
    return out


def leave_one_out_percentiles(
    x: np.ndarray, units: np.ndarray, p: float, labels: Sequence[object]
) -> np.ndarray:
    """The nearest-rank ``p``-th percentile of ``x`` without each unit of ``labels`` in turn.

    ``units`` is a label per sample. A label absent from ``units`` leaves ``x`` whole; a unit
    that holds every sample gives nan. One sort, then per unit a rank among what remains:
    O(n log n) in all, whatever the number of units (a report of 10^6 lines has thousands).
    """
    values = np.asarray(x, dtype=np.float64)
    units = np.asarray(units)
    order = np.argsort(values, kind="stable")
    xs = values[order]
    n = values.size
    index = {label: i for i, label in enumerate(labels)}
    codes = np.array([index.get(u, -1) for u in units.tolist()], dtype=np.int64)[order]
    # Sorted positions of each unit's samples, unit by unit (positions increasing within).
    by_unit = np.argsort(codes, kind="stable")
    counts = np.bincount(codes[codes >= 0], minlength=len(index))
    start = int(np.searchsorted(codes[by_unit], 0))
    out = np.empty(len(index))
    whole = xs[_rank(p, n) - 1] if n else math.nan
    for i in range(len(index)):
        m = int(counts[i])
        if m == 0:
            out[i] = whole
            continue
        pos = by_unit[start : start + m]
        start += m
        rest = n - m
        if rest <= 0:
            out[i] = math.nan
            continue
        k = _rank(p, rest) - 1  # 0-based rank among the samples of the other units
        # The k-th sample not in this unit sits at k + (how many of its samples come before).
        before = pos - np.arange(m)  # samples of other units before each of this unit's
        out[i] = xs[k + int(np.searchsorted(before, k, side="right"))]
    return out


# Bootstrap replicates of a unit bootstrap, and the most (replicate x sample) cells one pass of
# the weighted-rank search holds in memory at once.
_BOOT_REPLICATES = 400
_BOOT_CELLS = 4_000_000


class _UnitTail:
    """One phase's samples that a weighted nearest-rank ``p``-th percentile can land on.

    Sorted once; every unit's sample count; the top of the sorted values that holds the
    percentile of any reweighting that keeps enough weight up there (the rest is searched only
    for a replicate that needs it).
    """

    def __init__(self, x: np.ndarray, units: np.ndarray, labels: Sequence[object], p: float):
        order = np.argsort(x, kind="stable")
        self.xs = np.asarray(x, dtype=np.float64)[order]
        index = {label: i for i, label in enumerate(labels)}
        self.codes = np.array([index.get(u, -1) for u in np.asarray(units)[order].tolist()])
        self.counts = np.bincount(self.codes[self.codes >= 0], minlength=len(index))
        # Three times the tail's share plus 2% of the samples: a replicate's percentile lies
        # below this cut only when a few units that hold most of the tail all drop out.
        keep = min(self.xs.size, math.ceil(self.xs.size * (3 * (1 - p / 100) + 0.02)) + 1)
        self.top = self.xs.size - keep
        self.p = p

    def quantiles(self, weights: np.ndarray) -> np.ndarray:
        """The percentile under each row of unit ``weights`` (nan where a row weighs nothing)."""
        out = np.full(weights.shape[0], math.nan)
        total = weights @ self.counts
        k = np.maximum(np.ceil(self.p / 100.0 * total - 1e-9), 1.0)
        need = total - k + 1  # weighted samples at or above the percentile
        xs_top, codes_top = self.xs[self.top :][::-1], self.codes[self.top :][::-1]
        step = max(1, _BOOT_CELLS // max(codes_top.size, 1))
        for s in range(0, weights.shape[0], step):
            w = weights[s : s + step]
            w_top = np.where(codes_top >= 0, w[:, np.maximum(codes_top, 0)], 0.0)
            down = np.cumsum(w_top, axis=1)
            reach = down >= need[s : s + step, None]
            found = reach[:, -1] & (total[s : s + step] > 0)
            rows = np.flatnonzero(found)
            out[s + rows] = xs_top[np.argmax(reach[rows], axis=1)]
            for r in np.flatnonzero(~found & (total[s : s + step] > 0)).tolist():
                full = np.where(self.codes >= 0, w[r][np.maximum(self.codes, 0)], 0.0)
                out[s + r] = self.xs[int(np.searchsorted(np.cumsum(full), k[s + r]))]
        return out


def unit_bootstrap_variance(
    solo: np.ndarray,
    solo_units: np.ndarray,
    shared: np.ndarray,
    shared_units: np.ndarray,
    p: float,
    *,
    paired: bool,
    replicates: int = _BOOT_REPLICATES,
) -> float:
    """Bootstrap variance of ``log q_p(shared) - log q_p(solo)`` resampling whole units.

    Units are rounds (or batches): a replicate draws units with replacement and takes each
    phase's nearest-rank percentile of the samples of the units drawn, each as often as drawn.
    ``paired``: a unit label names a solo round and the shared round beside it, drawn together
    (drift they share cancels in the ratio, as it does in the estimate); otherwise each phase's
    units are drawn on their own. The variance is scaled by ``g / (g - 1)`` (``g`` units drawn,
    the fewer of the two phases' when unpaired), the usual small-sample correction of a
    cluster bootstrap. Where the delete-one jackknife of a percentile is biased upward (the
    Efron-Stein inequality; 15-45% in standard error on the models of ``docs/statistics.md``),
    this is not. Deterministic: the generator is seeded from the data's sizes. ``inf`` with
    fewer than two units.
    """
    x_so, x_sh = np.asarray(solo, dtype=np.float64), np.asarray(shared, dtype=np.float64)
    u_so, u_sh = np.asarray(solo_units), np.asarray(shared_units)
    rng = np.random.default_rng([x_so.size, x_sh.size, round(p * 1000), replicates])
    if paired:
        labels = sorted(set(u_so.tolist()) | set(u_sh.tolist()))
        g = len(labels)
        if g < 2:
            return math.inf
        draws = rng.integers(0, g, size=(replicates, g))
        weights = np.stack([np.bincount(row, minlength=g) for row in draws]).astype(np.float64)
        q_so = _UnitTail(x_so, u_so, labels, p).quantiles(weights)
        q_sh = _UnitTail(x_sh, u_sh, labels, p).quantiles(weights)
    else:
        qs = []
        sizes = []
        for x, u in ((x_so, u_so), (x_sh, u_sh)):
            labels = sorted(set(u.tolist()))
            sizes.append(len(labels))
            if len(labels) < 2:
                return math.inf
            draws = rng.integers(0, len(labels), size=(replicates, len(labels)))
            w = np.stack([np.bincount(row, minlength=len(labels)) for row in draws])
            qs.append(_UnitTail(x, u, labels, p).quantiles(w.astype(np.float64)))
        q_so, q_sh = qs
        g = min(sizes)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(q_sh) - np.log(q_so)
    logs = logs[np.isfinite(logs)]
    if logs.size < 2:
        return math.inf
    return float(np.var(logs, ddof=1)) * g / (g - 1)


def grouped_jackknife_variance(
    full: float, leave_out: np.ndarray, sizes: np.ndarray
) -> tuple[float, float]:
    """Delete-a-group jackknife variance of an estimate, for groups of unequal size.

    ``leave_out[j]`` is the estimate without group ``j``, which holds ``sizes[j]`` samples
    (Busing, Meijer & van der Leeden 1999: pseudo-values ``h_j full - (h_j - 1) leave_out[j]``
    with ``h_j = n / m_j``). Groups are the independent units (round pairs, or batches), so
    the dependence inside a group, bursts and all, is kept whole. Returns the variance and its
    degrees of freedom (``g - 1`` at most, fewer when few groups carry the spread: see
    :func:`_effective_dof`); ``(inf, 0)`` with fewer than two groups.
    """
    lo = np.asarray(leave_out, dtype=np.float64)
    m = np.asarray(sizes, dtype=np.float64)
    keep = np.isfinite(lo) & (m > 0)
    lo, m = lo[keep], m[keep]
    g = lo.size
    if g < 2:
        return math.inf, 0
    n = m.sum()
    h = n / m
    centre = g * full - float(np.sum((1.0 - m / n) * lo))
    pseudo = h * full - (h - 1.0) * lo
    terms = (pseudo - centre) ** 2 / (h - 1.0)
    variance = float(np.sum(terms) / g)
    return variance, _effective_dof(terms, g)


def _effective_dof(terms: np.ndarray, g: int) -> float:
    """Degrees of freedom of a variance estimate summed from ``g`` squared deviations.

    ``g - 1`` when the deviations are normal; fewer when a few units carry most of the sum (a
    rare burst falls in few rounds): Satterthwaite's ``2 / (2/(g-1) + kappa/g)`` with the
    excess kurtosis ``kappa`` of the deviations, read off the terms themselves.
    """
    total = float(terms.sum())
    if g < 2 or total <= 0:
        return float(max(g - 1, 0))
    m2 = total / g
    m4 = float(np.mean(terms**2))
    kurtosis = max(m4 / (m2 * m2) - 3.0, 0.0)
    # At least one: a t on fewer degrees of freedom than one unit's spread is no interval.
    return float(max(min(g - 1, 2.0 / (2.0 / (g - 1) + kurtosis / g)), 1.0))
