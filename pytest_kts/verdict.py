"""The degradation factor (shared / solo percentile) with a confidence interval and a verdict.

``DF = p(shared) / p(solo)`` at one percentile and one clock. A gate compares it with a
threshold, and the comparison follows the *interval*, not the point estimate:

* ``pass``  - the whole interval lies below the threshold;
* ``fail``  - the whole interval lies above it;
* ``inconclusive`` - the interval straddles it, or there are too few samples for any claim.

``assert df < 1.3`` therefore fails only on evidence. What an inconclusive comparison does is
the ``on_inconclusive`` policy (default ``"warn"``: the assertion holds and a
:class:`KtsInconclusiveWarning` says so). A :class:`DegradationFactor` is a frozen value: its
policy is fixed when it is made (``degradation(..., on_inconclusive=)``, or by ``assert_df``
from ``--kts-inconclusive``; :meth:`DegradationFactor.with_policy` gives a copy with another),
and the comparison operators are the one place where the policy is applied. Method and
evidence: ``docs/statistics.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from pytest_kts.errors import KtsError, StatisticsError
from pytest_kts.stats import (
    WARMUP_MAX_FRACTION,
    block_length,
    bootstrap_percentiles,
    min_samples,
    norm_ppf,
    percentile,
    rank_se_log,
    tail_dependence,
    trim_warmup,
)
from pytest_kts.thresholds import check_threshold

__all__ = [
    "POLICIES",
    "DegradationFactor",
    "InconclusiveError",
    "KtsInconclusiveWarning",
    "degradation",
]

POLICIES = ("warn", "fail", "skip", "error")
# The bootstrap only supplies a standard error: 1000 replicates pin it within ~2% (1/sqrt(2B)).
DEFAULT_REPLICATES = 1000


class KtsInconclusiveWarning(UserWarning):
    """A degradation gate could not decide with the samples it had; the assertion held."""


class InconclusiveError(KtsError):
    """A degradation gate could not decide and ``on_inconclusive="error"`` was asked for."""


def _is_threshold(x: object) -> TypeGuard[float | np.number[Any]]:
    """A number a DF compares with (a bool is not one: ``df < True`` is a mistake)."""
    return not isinstance(x, bool) and isinstance(x, (int, float, np.number))


def _fmt_p(p: float) -> str:
    return f"p{p:g}"


def interval_text(lo: float | None, hi: float | None, digits: int = 2) -> str:
    """``[lo, hi]``; an end that does not exist is open: ``[1.90, ∞)``, ``(0, ∞)``."""
    lo_ok = lo is not None and math.isfinite(lo) and lo > 0
    hi_ok = hi is not None and math.isfinite(hi)
    left = f"[{lo:.{digits}f}" if lo_ok else "(0"
    right = f"{hi:.{digits}f}]" if hi_ok else "∞)"
    return f"{left}, {right}"


@dataclass(frozen=True, eq=False)
class DegradationFactor:
    """Ratio of the shared to the solo percentile, its interval, and how it was obtained.

    ``ci`` is a two-sided interval at level ``1 - alpha``; ``alpha`` is ``1 - confidence``
    unless a sequential plan spent a smaller share of the error budget on this look. A
    verdict of ``fail`` when nothing changed then has probability at most ``alpha / 2``.
    """

    value: float
    ci: tuple[float, float]
    p: float
    confidence: float
    clock: str
    n_solo: int
    n_shared: int
    trimmed_solo: int
    trimmed_shared: int
    solo_quantile: float
    shared_quantile: float
    method: str
    reason: str | None = None
    on_inconclusive: str = "warn"
    alpha: float = math.nan
    dropped_solo: int = 0  # non-finite (unmeasured) samples ignored
    dropped_shared: int = 0
    # Extra lines for explain(), supplied by whoever holds the samples (results.TenantResult:
    # wait vs execution and co-tenant attribution); failures in it never hide the verdict.
    context: Callable[[], list[str]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.on_inconclusive not in POLICIES:
            raise ValueError(
                f"on_inconclusive must be one of {POLICIES}, got {self.on_inconclusive!r}"
            )
        if math.isnan(self.alpha):
            object.__setattr__(self, "alpha", 1.0 - self.confidence)

    def with_policy(self, on_inconclusive: str) -> DegradationFactor:
        """This DF with another inconclusive policy (a copy; this one is unchanged)."""
        if on_inconclusive == self.on_inconclusive:
            return self
        return dataclasses.replace(self, on_inconclusive=on_inconclusive)

    @property
    def bounded(self) -> bool:
        """Whether the verdict had an interval with two ends. A phase short of its sample
        floor removes one end (``ci`` holds 0 or infinity there, and ``reason`` says why)."""
        lo, hi = self.ci
        return lo > 0 and math.isfinite(hi)

    def interval(self, digits: int = 2) -> str:
        """The interval the verdict used, as text: only the ends that exist."""
        lo, hi = self.ci
        return interval_text(lo, hi, digits)

    # -- verdict -------------------------------------------------------------------------------

    def verdict(self, threshold: float) -> str:
        """``"pass"`` (CI below), ``"fail"`` (CI above) or ``"inconclusive"``."""
        t = float(threshold)
        # A bound that the samples cannot give is 0 or infinity (see ``reason``), so the
        # interval alone decides.
        lo, hi = self.ci
        if hi < t:
            return "pass"
        if lo > t:
            return "fail"
        return "inconclusive"

    def _compare(self, op: str, threshold: float | np.number[Any]) -> bool:
        t = check_threshold(threshold)  # NaN, inf, 0 or below: a ConfigError, not a verdict
        v = self.verdict(t)
        if v == "inconclusive":
            return self._inconclusive(op, t)
        if op in ("<", "<="):
            return v == "pass"
        return v == "fail"  # ">" / ">=": holds when the whole interval lies above the threshold

    def _inconclusive(self, op: str, t: float) -> bool:
        """The one place where the inconclusive policy is applied."""
        msg = self._inconclusive_message(op, t)
        policy = self.on_inconclusive
        if policy == "warn":
            # No alarm without evidence: the comparison holds, but visibly.
            warnings.warn(msg, KtsInconclusiveWarning, stacklevel=4)
            return True
        if policy == "fail":
            return False
        if policy == "skip":
            import pytest  # lazy: this module must stay importable without pytest

            pytest.skip(msg)
        raise InconclusiveError(msg)

    def _inconclusive_message(self, op: str, t: float) -> str:
        why = self.reason or (
            f"the {self._level()} interval contains the threshold {t:g}; more samples would "
            "narrow it"
        )
        return f"inconclusive: {self!r} {op} {t:g}: {why}"

    def __lt__(self, other: object) -> bool:
        if not _is_threshold(other):
            return NotImplemented
        return self._compare("<", other)

    def __le__(self, other: object) -> bool:
        if not _is_threshold(other):
            return NotImplemented
        return self._compare("<=", other)

    def __gt__(self, other: object) -> bool:
        if not _is_threshold(other):
            return NotImplemented
        return self._compare(">", other)

    def __ge__(self, other: object) -> bool:
        if not _is_threshold(other):
            return NotImplemented
        return self._compare(">=", other)

    def __bool__(self) -> bool:
        raise TypeError(
            "a DegradationFactor has no truth value: compare it with a threshold, "
            "e.g. `assert assert_df(tenant, p=99) < 1.3`"
        )

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return (
            f"DF {_fmt_p(self.p)} ({self.clock}) {self.value:.2f} {self.interval()} "
            f"n={self.n_solo}/{self.n_shared}"
        )

    __str__ = __repr__

    # -- explanation for pytest_assertrepr_compare ----------------------------------------------

    def _level(self) -> str:
        return f"{100 * (1 - self.alpha):.4g}%"

    def explain(self, op: str, threshold: float) -> list[str]:
        """Lines saying what was measured and why the comparison came out as it did."""
        t = float(threshold)
        v = self.verdict(t)
        pn = _fmt_p(self.p)
        lines = [
            f"DF {pn} ({self.clock} clock) = {self.value:.3f}, {self._level()} CI "
            f"{self.interval(3)}",
            f"solo   {pn} = {self.solo_quantile:.4g} ms from n={self.n_solo} samples "
            f"({self.trimmed_solo} warmup trimmed, {self.dropped_solo} unmeasured dropped)",
            f"shared {pn} = {self.shared_quantile:.4g} ms from n={self.n_shared} samples "
            f"({self.trimmed_shared} warmup trimmed, {self.dropped_shared} unmeasured dropped)",
        ]
        if v == "pass":
            what = f"pass: the whole interval lies below {t:g}"
        elif v == "fail":
            what = f"fail: the whole interval lies above {t:g}"
        else:
            what = f"inconclusive against {t:g} (on_inconclusive={self.on_inconclusive!r})"
        holds = self._holds(op, v)
        lines.append(f"verdict: {what}; `DF {op} {t:g}` {'holds' if holds else 'does not hold'}")
        if self.reason:
            lines.append(f"reason: {self.reason}")
        if self.confidence != 1.0 - self.alpha:
            lines.append(
                f"error budget: alpha {self.alpha:.3g} of {1 - self.confidence:.3g} spent on "
                "this look (sequential plan)"
            )
        lines.append(f"method: {self.method}")
        if self.context is not None:
            try:
                lines += self.context()
            except Exception as exc:  # an explanation must not turn a verdict into an error
                lines.append(f"(no attribution: {type(exc).__name__}: {exc})")
        return lines

    def _holds(self, op: str, v: str) -> bool:
        if v == "inconclusive":
            return self.on_inconclusive == "warn"
        return (v == "pass") if op in ("<", "<=") else (v == "fail")


# ---------------------------------------------------------------------------------------------


def _finite_or(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback


def _seed_from(*parts: np.ndarray | float | str) -> int:
    """A seed that is a function of the inputs, so the same data always gives the same CI."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return int.from_bytes(h.digest(), "little")


def _label_bytes(labels: np.ndarray) -> np.ndarray:
    # Numeric round labels hash as they are; anything else by its text.
    return labels if labels.dtype.kind in "iuf" else labels.astype(str)


def _prepare(
    x: Sequence[float] | np.ndarray, segments: object, trim: bool, name: str
) -> tuple[np.ndarray, np.ndarray, int, int]:
    values = np.asarray(x, dtype=np.float64).ravel()
    if values.size == 0:
        raise StatisticsError(f"no {name} samples: the {name} phase produced no iterations")
    finite = np.isfinite(values)
    if not finite.any():
        raise StatisticsError(
            f"all {values.size} {name} samples are nan or infinite: nothing was measured "
            "(is this clock available on this device?)"
        )
    seg = None if segments is None else np.asarray(segments)
    cap = WARMUP_MAX_FRACTION if trim else 0.0
    kept, labels, trimmed = trim_warmup(values, seg, max_fraction=cap)
    if np.any(kept < 0):
        raise StatisticsError(f"{name} latencies must be >= 0 ms; got negative values")
    return kept, labels, trimmed, int((~finite).sum())


def degradation(
    solo: Sequence[float] | np.ndarray,
    shared: Sequence[float] | np.ndarray,
    p: float = 99,
    confidence: float = 0.95,
    *,
    clock: str = "host",
    solo_segments: Sequence[object] | np.ndarray | None = None,
    shared_segments: Sequence[object] | np.ndarray | None = None,
    trim: bool = True,
    alpha: float | None = None,
    seed: int | None = None,
    on_inconclusive: str = "warn",
    replicates: int = DEFAULT_REPLICATES,
    undecided_at: float | None = None,
) -> DegradationFactor:
    """Degradation factor ``p(shared) / p(solo)`` with a dependence-robust interval.

    ``solo``/``shared`` are per-iteration latencies (ms) in time order; ``*_segments`` their
    round labels. Each round's warmup is trimmed by MSER-5 (``trim=False`` keeps it).

    The two-sided interval at level ``1 - alpha`` (``alpha`` defaults to ``1 - confidence``)
    is a normal interval on ``log DF``; each phase's standard error is the larger of a circular
    block bootstrap within rounds (Politis-White block length) and a rank-based standard error
    inflated for autocorrelation under a Gaussian copula. Below the order-statistic floor
    (:func:`min_samples` at one-sided level ``1 - alpha/2``, counted in independent clusters
    of exceedances) no claim is possible: the result is then always inconclusive and
    ``reason`` says how many more samples are needed. Deterministic: the bootstrap seed is
    derived from the data unless ``seed`` is given. ``docs/statistics.md`` has the evidence.

    ``undecided_at`` (a threshold, used by the sequential runner) skips the bootstrap when the
    cheaper rank-based interval, which the final one always contains, already contains that
    threshold: the verdict against it is then inconclusive either way, and the rank-based
    interval is reported (``method`` says so).
    """
    if not 0.0 < p < 100.0:
        raise ValueError(f"p must be in (0, 100), got {p}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = 1.0 - confidence if alpha is None else float(alpha)
    if not 0.0 <= a < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    if replicates < 100:
        raise ValueError("replicates must be >= 100 for a usable interval")

    so, so_lab, so_trim, so_drop = _prepare(solo, solo_segments, trim, "solo")
    sh, sh_lab, sh_trim, sh_drop = _prepare(shared, shared_segments, trim, "shared")
    q_so = percentile(so, p)
    q_sh = percentile(sh, p)
    if q_so <= 0:
        raise StatisticsError(
            f"solo {_fmt_p(p)} is {q_so} ms: a ratio needs a positive baseline latency"
        )
    value = q_sh / q_so

    # Dependence (Gaussian copula of the samples): F inflates each percentile's variance,
    # theta is the share of exceedances that start a new cluster.
    f_so, th_so = tail_dependence(so, so_lab, p)
    f_sh, th_sh = tail_dependence(sh, sh_lab, p)
    nc_so, nc_sh = so.size * th_so, sh.size * th_sh

    reasons = []
    # A lower bound for DF needs an upper bound for the solo percentile, and an upper bound
    # for DF one for the shared percentile: each needs the order-statistic floor, counted in
    # independent clusters of exceedances (with theta < 1 a run of slow iterations is one
    # observation of the tail, not many). The other two bounds exist with far fewer samples.
    # So a phase short of the floor removes one side of the interval, not both: a clear
    # regression can fail once the *solo* phase has its floor, whatever the shared phase's
    # clustering, and a clear pass needs the shared phase's floor.
    floor = min_samples(p, 1.0 - a / 2) if a > 0 else 0
    solo_ok = a > 0 and nc_so >= floor
    shared_ok = a > 0 and nc_sh >= floor
    if a <= 0:
        reasons.append("no error budget left for this look (alpha = 0)")
    elif not (solo_ok or shared_ok):
        more = max(floor / th_so - so.size, floor / th_sh - sh.size)
        reasons.append(
            f"too few samples: bounding {_fmt_p(p)} at one-sided confidence {1 - a / 2:.4g} "
            f"needs >= {floor} independent samples per phase; have solo {nc_so:.0f} "
            f"(n={so.size}, extremal index {th_so:.2f}), shared {nc_sh:.0f} "
            f"(n={sh.size}, extremal index {th_sh:.2f}): about {math.ceil(more)} more "
            "per phase"
        )
    elif not solo_ok:
        reasons.append(
            f"no lower bound: bounding the solo {_fmt_p(p)} at one-sided confidence "
            f"{1 - a / 2:.4g} needs >= {floor} independent samples; have {nc_so:.0f} "
            f"(n={so.size}, extremal index {th_so:.2f}): a fail verdict needs about "
            f"{math.ceil(floor / th_so - so.size)} more solo samples"
        )
    elif not shared_ok:
        reasons.append(
            f"no upper bound: bounding the shared {_fmt_p(p)} at one-sided confidence "
            f"{1 - a / 2:.4g} needs >= {floor} independent samples; have {nc_sh:.0f} "
            f"(n={sh.size}, extremal index {th_sh:.2f}): a pass verdict needs about "
            f"{math.ceil(floor / th_sh - sh.size)} more shared samples"
        )

    b_so = round(block_length(so, so_lab))
    b_sh = round(block_length(sh, sh_lab))
    if seed is None:
        seed = _seed_from(so, _label_bytes(so_lab), sh, _label_bytes(sh_lab), float(p), float(a))
    rng = np.random.default_rng(seed)
    z = norm_ppf(1.0 - a / 2) if a > 0 else math.inf
    centre = math.log(value) if value > 0 else -math.inf
    se_rank = (rank_se_log(so, p, f_so), rank_se_log(sh, p, f_sh))
    # Where a phase's rank interval reaches past its largest sample, its lower half still
    # bounds the percentile from below.
    se_low = (
        rank_se_log(so, p, f_so, side="lower"),
        rank_se_log(sh, p, f_sh, side="lower"),
    )
    rank_only = not (solo_ok or shared_ok)  # no bound either side: inconclusive whatever the CI
    if not rank_only and undecided_at is not None and math.isfinite(z):
        # The final standard errors are never below the rank-based ones, so if the
        # rank-based bounds cannot decide against the threshold, neither can the final ones:
        # skip the bootstrap (the sequential runner's looks are mostly of this kind).
        t = math.log(undecided_at)
        lo_rank = centre - z * math.hypot(se_rank[0], _finite_or(se_rank[1], se_low[1]))
        hi_rank = centre + z * math.hypot(_finite_or(se_rank[0], se_low[0]), se_rank[1])
        can_fail = solo_ok and lo_rank > t
        can_pass = shared_ok and hi_rank < t
        rank_only = not (can_fail or can_pass)
    tiny = np.finfo(np.float64).tiny
    ses = list(se_rank)
    if not rank_only:
        for i, (x, lab, b) in enumerate(((so, so_lab, b_so), (sh, sh_lab, b_sh))):
            boot = bootstrap_percentiles(x, lab, p, block=b, replicates=replicates, rng=rng)
            se_boot = float(np.std(np.log(np.maximum(boot, tiny)), ddof=1))
            # The block bootstrap under-covers when rounds are short against the dependence
            # (AR(1) rho = 0.9, 4 rounds: 13% one-sided misses at nominal 2.5%); the rank-based
            # standard error with the copula inflation guards that case: the larger is used.
            ses[i] = max(se_boot, ses[i])
    # The two phases are independent runs. The lower bound of DF takes the solo phase's
    # upper side and the shared phase's lower side; the upper bound the other two.
    se_lo = math.hypot(ses[0], _finite_or(ses[1], se_low[1]))
    se_hi = math.hypot(_finite_or(ses[0], se_low[0]), ses[1])
    if (solo_ok or shared_ok) and not (math.isfinite(se_lo) or math.isfinite(se_hi)):
        reasons.append(
            "too few samples in the tail: the rank interval of a phase's percentile reaches "
            "past its largest sample (strong autocorrelation); more rounds are needed"
        )
    lo = math.exp(centre - z * se_lo) if solo_ok and math.isfinite(se_lo) else 0.0
    hi = math.exp(centre + z * se_hi) if shared_ok and math.isfinite(se_hi) else math.inf
    ci = (lo, hi)

    if rank_only:
        why = (
            "below the sample floor"
            if not (solo_ok or shared_ok)
            else f"cannot decide against {undecided_at:g}"
        )
        method = (
            f"rank-based interval only ({why}, no bootstrap), Gaussian-copula "
            f"inflation {f_so:.2f}/{f_sh:.2f}, nearest-rank {_fmt_p(p)}, "
            f"MSER-5 warmup trim {'on' if trim else 'off'}"
        )
    else:
        method = (
            f"circular block bootstrap within rounds (Politis-White block {b_so}/{b_sh} "
            f"solo/shared, {replicates} replicates) guarded by a rank-based standard error with "
            f"Gaussian-copula inflation {f_so:.2f}/{f_sh:.2f}, normal interval on log DF, "
            f"nearest-rank {_fmt_p(p)}, MSER-5 warmup trim {'on' if trim else 'off'}"
        )
    return DegradationFactor(
        value=value,
        ci=ci,
        p=float(p),
        confidence=float(confidence),
        clock=clock,
        n_solo=int(so.size),
        n_shared=int(sh.size),
        trimmed_solo=so_trim,
        trimmed_shared=sh_trim,
        solo_quantile=q_so,
        shared_quantile=q_sh,
        method=method,
        reason="; ".join(reasons) or None,
        on_inconclusive=on_inconclusive,
        alpha=a,
        dropped_solo=so_drop,
        dropped_shared=sh_drop,
    )
