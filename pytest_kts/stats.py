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

import itertools
import math
from dataclasses import dataclass

import numpy as np

from pytest_kts.errors import StatisticsError

__all__ = [
    "Summary",
    "block_length",
    "bootstrap_percentiles",
    "min_samples",
    "norm_ppf",
    "percentile",
    "quantile_inflation",
    "rank_se_log",
    "summarize",
    "tail_dependence",
    "trim_warmup",
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


# ---------------------------------------------------------------------------------------------
# Dependence: block length and the within-segment block bootstrap
# ---------------------------------------------------------------------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(values.size)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size, dtype=np.float64)
    return ranks


# Above this many lag-sample products (n = 10^4 with ~100 lags) the autocovariances are
# computed by FFT; below, by the lag loop (the same pairs; equal to about 1e-15).
_ACV_DIRECT_MAX = 1 << 20


def _run_lag_sums(eps: np.ndarray, labels: np.ndarray, m_max: int) -> np.ndarray:
    """``sum_t eps[t] * eps[t + k]`` over pairs inside one contiguous run of a label, k <= m_max."""
    out = np.zeros(m_max + 1)
    bounds = np.concatenate(([0], np.flatnonzero(labels[1:] != labels[:-1]) + 1, [eps.size]))
    for lo, hi in itertools.pairwise(bounds.tolist()):
        seg = eps[lo:hi]
        if seg.size < 2:
            continue
        size = 1 << int(2 * seg.size - 1).bit_length()
        f = np.fft.rfft(seg, size)
        lags = np.fft.irfft(f * np.conj(f), size)[: min(m_max, seg.size - 1) + 1]
        out[: lags.size] += lags
    return out


def _within_acv(series: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Autocovariances pairing samples of one segment only, and the Politis-White lag cut.

    Returns ``(acv[0..m_max], m)``: ``m`` is twice the first lag after which ``kn``
    consecutive autocorrelations lie inside ``+-2 sqrt(log10(n)/n)`` (Politis & White 2004),
    the number of lags worth summing.
    """
    n = series.size
    eps = series - series.mean()
    kn = max(5, int(math.log10(n)))
    m_max = min(math.ceil(math.sqrt(n)) + kn, n - 2)
    acv = np.empty(m_max + 1)
    acv[0] = eps @ eps / n
    if n * m_max > _ACV_DIRECT_MAX:
        # Long series: every lag at once by FFT per contiguous run, O(n log n) instead of
        # O(n sqrt n); the same pairs as the loop below (adjacent samples of one run).
        acv[1:] = _run_lag_sums(eps, labels, m_max)[1:] / n
    else:
        for k in range(1, m_max + 1):
            # A pair at lag k counts only inside one segment (segments are contiguous runs).
            mask = labels[:-k] == labels[k:]
            acv[k] = (eps[:-k][mask] @ eps[k:][mask]) / n
    if acv[0] <= 0:
        return np.zeros(m_max + 1), 1
    acorr = np.abs(acv / acv[0])
    band = 2 * math.sqrt(math.log10(n) / n)
    for i in range(kn, m_max + 1):
        if np.all(acorr[i - kn + 1 : i + 1] < band):
            return acv, min(2 * max(i - kn, 1), m_max)
    return acv, m_max


def _flat_top(m: int) -> np.ndarray:
    """Politis-Romano flat-top lag window at lags 1..m: 1 up to m/2, then linear to 0."""
    k = np.arange(1, m + 1, dtype=np.float64)
    return np.where(k / m <= 0.5, 1.0, 2 * (1 - k / m))


def block_length(x: np.ndarray, segments: np.ndarray | None = None) -> float:
    """Politis-White (2004, corrected 2009) optimal circular-block length.

    Computed on the ranks of ``x`` so that a few huge latencies do not dominate the
    autocovariances (the block only has to span the dependence, whatever the marginal).
    Autocovariances pair samples of the same segment only (rounds are separate runs).
    ``x`` and ``segments`` must already be finite and grouped by segment (as
    :func:`trim_warmup` returns them). Result is in ``[1, min(3 sqrt(n), n / 3)]``.
    """
    values, labels = _as_series(x, segments)
    n = values.size
    if n < 8:
        return 1.0
    acv, m = _within_acv(_ranks(values), labels)
    k = np.arange(1, m + 1, dtype=np.float64)
    lam = _flat_top(m)
    g = float(np.sum(2 * lam * k * acv[1 : m + 1]))
    lr = float(acv[0] + np.sum(2 * lam * acv[1 : m + 1]))
    b_max = math.ceil(min(3 * math.sqrt(n), n / 3))
    if lr <= 0 or g == 0:
        return 1.0
    b = (2 * g**2 / (4 / 3 * lr**2)) ** (1 / 3) * n ** (1 / 3)
    return float(min(max(b, 1.0), b_max))


_BOOT_CELLS = 1 << 23


def bootstrap_percentiles(
    x: np.ndarray,
    segments: np.ndarray | None,
    p: float,
    *,
    block: int,
    replicates: int,
    rng: np.random.Generator,
    chunk: int = 256,
) -> np.ndarray:
    """Nearest-rank ``p``-th percentile of ``replicates`` circular-block resamples of ``x``.

    Each resample has ``n`` samples made of blocks of ``block`` consecutive samples. A block
    starts at a uniformly drawn sample and wraps around *within that sample's segment*, so it
    never joins the end of one round to the start of another, while blocks from different
    rounds mix (the between-round spread is part of the uncertainty). ``x``/``segments`` must
    be grouped by segment, as :func:`trim_warmup` returns them. Vectorised in chunks of
    ``chunk`` replicates to bound memory at ``chunk * n`` indices.
    """
    values, labels = _as_series(x, segments)
    n = values.size
    if n == 0:
        raise StatisticsError("cannot bootstrap an empty sample")
    b = int(max(1, min(block, n)))
    windows, start_of = _circular_windows(values, labels, b)
    n_blocks = -(-n // b)
    k = _rank(p, n) - 1
    # Bound the resample matrix at _BOOT_CELLS values whatever n is (10^6 lines: ~64 MB).
    chunk = max(1, min(chunk, _BOOT_CELLS // max(n_blocks * b, 1)))
    out = np.empty(replicates)
    for lo in range(0, replicates, chunk):
        hi = min(replicates, lo + chunk)
        starts = start_of[rng.integers(0, n, size=(hi - lo, n_blocks))]
        # Row gathers of contiguous windows: no per-element index arithmetic.
        sample = windows[starts].reshape(hi - lo, n_blocks * b)[:, :n]
        out[lo:hi] = np.partition(sample, k, axis=1)[:, k]
    return out


def _circular_windows(
    values: np.ndarray, labels: np.ndarray, b: int
) -> tuple[np.ndarray, np.ndarray]:
    """All length-``b`` blocks that wrap within their segment, as rows of a strided view.

    Each segment is followed by its own first ``b - 1`` values (repeated if the segment is
    shorter than ``b``), so the window starting at any sample of the segment is contiguous.
    Returns the window view and, per sample, the row of the window that starts there.
    """
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    lengths = np.diff(np.r_[starts, values.size])
    pieces = []
    start_of = np.empty(values.size, dtype=np.int64)
    offset = 0
    for s, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        seg = values[s : s + length]
        pieces.append(seg)
        pieces.append(seg[np.arange(b - 1) % length])
        start_of[s : s + length] = offset + np.arange(length)
        offset += length + b - 1
    extended = np.concatenate(pieces)
    return np.lib.stride_tricks.sliding_window_view(extended, b), start_of


# ---------------------------------------------------------------------------------------------
# Dependence at the tail: Gaussian-copula variance inflation and a rank-based standard error
# ---------------------------------------------------------------------------------------------


def _norm_ppf_vec(u: np.ndarray) -> np.ndarray:
    """Vectorised Acklam approximation (relative error ~1e-9): enough for normal scores."""
    u = np.asarray(u, dtype=np.float64)
    out = np.empty_like(u)
    lo = 0.02425
    low, high = u < lo, u > 1 - lo
    mid = ~(low | high)
    q = u[mid] - 0.5
    r = q * q
    num = ((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]
    den = ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1
    out[mid] = num * q / den
    for mask, sign, tail in ((low, 1.0, u), (high, -1.0, 1 - u)):
        q = np.sqrt(-2 * np.log(tail[mask]))
        num = ((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]
        den = (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1
        out[mask] = sign * num / den
    return out


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(48)


def _exceedance_cov(h: float, r: np.ndarray) -> np.ndarray:
    """Cov(1{Z_0 > h}, 1{Z_k > h}) for standard bivariate normals with correlation ``r``.

    Plackett's identity d Phi2 / d r = phi2 gives ``(1/2pi) int_0^{asin r}
    exp(-h^2 / (1 + sin t)) dt``; the substitution r = sin t removes the 1/sqrt(1 - r^2)
    singularity, so 48-point Gauss-Legendre is exact to ~1e-12 for |r| <= 0.999.
    """
    r = np.clip(np.asarray(r, dtype=np.float64), -0.999, 0.999)
    top = np.arcsin(r)[:, None]
    t = 0.5 * top * (_GL_NODES[None, :] + 1.0)
    integrand = np.exp(-(h * h) / (1.0 + np.sin(t)))
    phi2: np.ndarray = (0.5 * top[:, 0] * (integrand @ _GL_WEIGHTS)) / (2 * math.pi)
    return phi2


def tail_dependence(x: np.ndarray, segments: np.ndarray | None, p: float) -> tuple[float, float]:
    """``(F, theta)``: how autocorrelation dilutes the information about the ``p``-th percentile.

    ``F`` is the variance inflation of the sample percentile: its variance is
    ``p(1-p) F / (n f(q)^2)`` with ``F = 1 + 2 sum_k corr(1{X_0 > q}, 1{X_k > q})`` (Bahadur
    representation), so ``n / F`` is the effective sample size for its *spread*. ``theta`` is
    the probability that an exceedance of ``q`` is not followed by another (the runs estimate
    of the extremal index), so ``n theta`` counts independent *clusters* of exceedances, what
    the order-statistic floor is about (seeing the tail at all).

    Exceedances of p99 are too rare to estimate their correlations directly, so both come
    from the lag correlations of the normal scores of ``x`` under a Gaussian copula (any
    marginal; dependence of an autoregressive kind). For AR(1) with rho = 0.9 at p99 this
    gives F = 5.9 and theta = 0.46 (rho = 0.5: 1.35 and 0.87); the mean's inflation would be
    19 (3). Lags are summed within segments, with the Politis-White cut and the flat-top
    window. ``x`` must be finite and grouped by segment. ``F >= 1``, ``theta`` in (0, 1].
    """
    values, labels = _as_series(x, segments)
    n = values.size
    if n < 8:
        return 1.0, 1.0
    scores = _norm_ppf_vec((_ranks(values) + 0.5) / n)
    acv, m = _within_acv(scores, labels)
    if acv[0] <= 0:
        return 1.0, 1.0
    rho = acv[1 : m + 1] / acv[0]
    q = p / 100.0
    h = float(norm_ppf(q))
    cov = _exceedance_cov(h, rho)
    factor = 1.0 + 2.0 * float(np.sum(_flat_top(m) * cov)) / (q * (1 - q))
    # P(X_1 > q | X_0 > q) = ((1-q)^2 + cov_1) / (1-q); theta is its complement.
    theta = 1.0 - ((1 - q) ** 2 + max(float(cov[0]), 0.0)) / (1 - q)
    return float(min(max(factor, 1.0), n)), float(min(max(theta, 1.0 / n), 1.0))


def quantile_inflation(x: np.ndarray, segments: np.ndarray | None, p: float) -> float:
    """Variance inflation ``F`` of the ``p``-th sample percentile (see :func:`tail_dependence`)."""
    return tail_dependence(x, segments, p)[0]


def rank_se_log(x: np.ndarray, p: float, inflation: float = 1.0, side: str = "both") -> float:
    """Standard error of log(p-th percentile) from the spread of nearby order statistics.

    The rank of the true percentile among ``n`` samples has sd ``s = sqrt(n p (1-p) F)``
    (binomial, inflated by ``F`` for dependence), so half the log-distance between the order
    statistics at ranks ``np - s`` and ``np + s`` estimates the sd of log(percentile)
    (Siddiqui-Bloch-Gastwirth with the natural bandwidth). Fractional ranks interpolate
    linearly here only, the percentile itself stays nearest-rank. ``inf`` when ``np + s > n``:
    the sample has not reached far enough into the tail to bound the percentile from above.
    ``side="lower"`` uses the ranks ``np - s`` and ``np`` only: the spread that a *lower*
    bound for the percentile needs, which exists with far fewer samples.
    """
    if side not in ("both", "lower"):
        raise ValueError(f"side must be 'both' or 'lower', got {side!r}")
    values = _finite(x)
    n = values.size
    if n < 2 or np.any(values <= 0):
        return math.inf
    q = p / 100.0
    s = math.sqrt(n * q * (1 - q) * inflation)
    hi = n * q + s if side == "both" else n * q
    if hi > n:
        return math.inf
    lo = max(1.0, n * q - s)
    if hi <= lo:
        return math.inf
    logs = np.log(np.sort(values))
    ranks = np.arange(1, n + 1, dtype=np.float64)
    v_lo, v_hi = np.interp([lo, hi], ranks, logs)
    return float((v_hi - v_lo) / (hi - lo) * s)
