"""The evidence behind a degradation factor: one record that every reader reads.

One file on purpose: the record and the one function that fills it (each phase's counts and
tail, the round-pair bootstrap, the within-round bound, the floor and the reason) are read
together by everything downstream; split, the floor rule and the interval would live apart.

:func:`df_evidence` turns a tenant's solo and shared latencies (with their round labels) into
an :class:`Evidence`: the estimate, its interval at the look's level and at the user's
confidence, the standard errors, the degrees of freedom, each phase's counts, quantile, tail
clustering and sample floor, and what limits the interval. The verdict, the sequential look
planner, the power hint, the assertion message and every report read this record; none of
them recomputes a number of its own.

The method (``docs/statistics.md`` has the evidence for each choice):

* **Estimate.** ``DF = q_p(shared) / q_p(solo)``, nearest-rank percentiles of the samples kept
  after each round's warmup (MSER-5).
* **Round pairs as the unit.** Solo round ``r`` and shared round ``r`` run next to each other
  in time, so drift they share cancels in their ratio. The standard error of ``log DF`` comes
  from a bootstrap over round pairs, each pair drawn whole (``stats.unit_bootstrap_variance``):
  a pair keeps its bursts whole, round-to-round drift that does not cancel shows as spread
  between pairs, and drift that does cancel does not. (A delete-one-pair jackknife, used
  before, is biased upward for a percentile: 15-45% above the true spread on smooth models.)
  A phase recorded as one long run is cut into contiguous batches instead (unpaired). The
  critical value is Student's t on the units' degrees of freedom (``pairs - 1``, fewer when
  few pairs carry the spread), so an early look with few pairs is wide, not wrong.
* **Guarded by the tail itself.** With few pairs the bootstrap can be small by chance (a pair
  without a burst looks like every other). Each side of the interval is at least as wide as a
  within-round bound from the order statistics around the percentile, inflated by how the
  exceedances cluster (``stats.tail_clusters``), with t degrees of freedom from the number of
  independent clusters.
* **The floor.** Bounding a phase's percentile from above at one-sided level ``1 - a/2``
  needs ``min_samples(p, 1 - a/2)`` independent samples, counted as ``kept / F`` with ``F``
  the dispersion of the count of that phase's exceedances (``sum C^2 / sum C`` over cluster
  sizes: 1 for independent samples, about twice the mean run length for runs). A lower
  bound for DF needs the solo phase's floor, an upper bound the shared phase's: a phase
  short of its floor removes one end of the interval, not both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pytest_kts.errors import StatisticsError
from pytest_kts.stats import (
    WARMUP_MAX_FRACTION,
    TailClusters,
    batch_labels,
    grouped_jackknife_variance,
    leave_one_out_percentiles,
    min_samples,
    norm_ppf,
    percentile,
    t_ppf,
    tail_clusters,
    tail_halfwidths,
    trim_warmup,
    unit_bootstrap_variance,
)

__all__ = [
    "Evidence",
    "PhaseEvidence",
    "Prepared",
    "df_evidence",
    "floor_samples",
    "prepare",
]

# Round pairs below which the between-unit spread is not reported as round-to-round drift.
DRIFT_MIN_PAIRS = 4

# The clustering a pass assumes before the tail has shown its own: the dispersion of the
# exceedance count (2.5: extremal index about 0.57, the middle of what p99 tails measured on
# the H200, 0.29 for an open-loop router to 1.0 for closed-loop FFTs), worth as much as this
# many exceedances of the phase's own. See ``upper_dispersion``.
PRIOR_DISPERSION = 2.5
PRIOR_EXCEEDANCES = 10.0
# How far above its estimate a pass takes the dispersion, in relative standard errors of an
# estimate read from k clusters (1 / sqrt(k)). See ``upper_dispersion``.
DISPERSION_MARGIN = 0.5


def upper_dispersion(solo: TailClusters, shared: TailClusters) -> float:
    """The dispersion the shared percentile's upper range and floor use: what a pass rests on.

    For each phase, its measured dispersion or that dispersion shrunk towards
    ``PRIOR_DISPERSION`` with the weight of ``PRIOR_EXCEEDANCES`` exceedances, whichever is
    larger, taken ``DISPERSION_MARGIN`` relative standard errors up (``1 / sqrt(k)`` for ``k``
    clusters); the larger of the two phases'. Two ways a sample hides its tail's clustering,
    both seen on a model whose p99 rests on rare runs (0.35% of iterations start a run of
    about 5 slow ones; true dispersion 7.6):

    * *No run in the sample.* 900 samples hold about 3 runs, none in 4% of such phases; the
      exceedances are then body values that look independent (dispersion 1.0-1.2), in the
      shared phase and often in the solo phase too. The prior covers this.
    * *Few runs, read low.* ``sum C^2 / sum C`` over some 10 clusters is set by the longest
      few and reads 2-3 where the truth is 7.6; the margin covers part of this.

    Without them the runner passed such a regression (DF 1.5 and 1.66 against 1.3, the effect
    in the top 2%) in 2.0-2.5% of runs, with the prior alone in 0.8-2.2%, with both in
    0.2% (``docs/statistics.md`` sections 4 and 8). The prior fades as exceedances accumulate (10 of
    them, 1000 samples at p99, halve it) and the margin as clusters do. Both widen only the
    upper end: false fails and detection do not change; clean runs pass later.
    """

    def shrunk(t: TailClusters) -> float:
        n = float(t.exceedances)
        return (PRIOR_DISPERSION * PRIOR_EXCEEDANCES + t.inflation * n) / (PRIOR_EXCEEDANCES + n)

    def bound(t: TailClusters) -> float:
        margin = 1.0 + DISPERSION_MARGIN / math.sqrt(max(t.clusters, 1))
        return max(t.inflation, shrunk(t)) * margin

    return max(bound(solo), bound(shared), 1.0)


def raw_floor(p: float, solo: PhaseEvidence, shared: PhaseEvidence, floor: int, phase: str) -> int:
    """Raw samples the ``phase`` ("solo" or "shared") needs for ``floor`` independent ones.

    The solo phase counts at its own dispersion. The shared phase counts at
    ``upper_dispersion``, whose prior and margin fade as exceedances and clusters accumulate,
    so the count is projected: both phases' clusters and exceedances grow with their samples
    (at ``100 - p`` percent when a phase has none yet), and the answer is the smallest count
    whose projected dispersion leaves ``floor`` independent samples.
    """
    if phase == "solo":
        return math.ceil(floor * max(solo.inflation, 1.0))

    def projected(ph: PhaseEvidence, n: float) -> TailClusters:
        grow = n / max(ph.kept, 1)
        exceed = ph.exceedances * grow if ph.exceedances else n * (100.0 - p) / 100.0
        clusters = ph.clusters * grow if ph.clusters else exceed
        return TailClusters(ph.quantile, round(exceed), round(clusters), ph.theta, ph.inflation)

    def enough(n: int) -> bool:
        return n >= floor * upper_dispersion(projected(solo, n), projected(shared, n))

    lo, hi = floor, max(floor, math.ceil(floor * max(shared.inflation_up, 1.0)))
    while not enough(hi):  # the projection can only fade, but stay safe
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def floor_samples(p: float, level: float) -> int | None:
    """Independent samples that bounding the ``p``-th percentile from above needs at the
    two-sided ``level`` (one side: ``1 - level/2``); ``None`` with no level to spend.

    The one floor rule: the verdict, the look planner and the power hint all call this.
    """
    if not level > 0:
        return None
    return min_samples(p, 1.0 - level / 2.0)


@dataclass(frozen=True)
class Prepared:
    """One phase's latencies, ready for a DF: warmup trimmed, finite, grouped by round."""

    values: np.ndarray
    labels: np.ndarray
    measured: int  # finite samples before trimming
    trimmed: int
    dropped: int  # non-finite samples (not measured)


def prepare(x: Any, segments: Any, *, trim: bool, name: str) -> Prepared:
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
    kept, labels, trimmed = trim_warmup(
        values, seg, max_fraction=WARMUP_MAX_FRACTION if trim else 0
    )
    if np.any(kept < 0):
        raise StatisticsError(f"{name} latencies must be >= 0 ms; got negative values")
    return Prepared(kept, labels, int(finite.sum()), int(trimmed), int((~finite).sum()))


@dataclass(frozen=True)
class PhaseEvidence:
    """What one phase contributes to a DF."""

    measured: int  # finite samples measured in the phase (before warmup trimming)
    kept: int  # samples the percentile is taken of
    trimmed: int  # warmup samples removed (per round, MSER-5)
    dropped: int  # non-finite samples (not measured) ignored
    rounds: int  # rounds with kept samples
    quantile: float  # ms: the nearest-rank percentile of the kept samples
    exceedances: int  # kept samples above the quantile
    clusters: int  # independent clusters of those (runs estimator, within rounds)
    theta: float  # clusters / exceedances: the extremal index estimate (1 with none)
    inflation: float  # dispersion of the exceedance count (sum C^2 / sum C) of this phase
    inflation_up: float  # the dispersion its upper range and floor use (see df_evidence)
    critical: float  # normal quantile of the look's level (the tail range's multiplier)
    half_down: float  # log distance to the lowest plausible percentile at that critical value
    half_up: float  # ... to the highest (inf: even the largest sample is plausible)

    @property
    def effective(self) -> float:
        """Independent samples behind the percentile's upper bound: what the floor counts
        (the kept samples over the dispersion of their exceedance count)."""
        return self.kept / max(self.inflation_up, 1.0)

    def bounded(self, floor: int | None) -> bool:
        """Whether this phase's percentile can be bounded from above against ``floor``."""
        return floor is not None and self.effective >= floor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evidence:
    """Everything a DF verdict rests on, at one look. Frozen: read by every report."""

    p: float
    clock: str
    confidence: float  # the user's: the error rate of the whole (sequential) procedure
    level: float  # the two-sided alpha this look's interval spends (1 - confidence: one look)
    estimate: float  # DF
    ci: tuple[float, float]  # the verdict's interval, at ``level``; 0 / inf: an end missing
    ci_single: tuple[float, float]  # the interval at the user's confidence, as one look
    se_lower: float  # standard error of log DF used for the lower end (inf: none)
    se_upper: float  # ... for the upper end
    critical_lower: float  # multiplier of se_lower (t quantile at level)
    critical_upper: float
    units: int  # independent units the bootstrap draws (round pairs, rounds or batches)
    unit_kind: str  # "round pairs" | "rounds" | "batches"
    jackknife_dof: float  # degrees of freedom of the between-unit variance (units - 1 at most)
    floor: int | None  # independent samples per phase a bound needs at ``level``
    solo: PhaseEvidence
    shared: PhaseEvidence
    drift_share: float  # share of the between-unit variance the within-round tail does not explain
    limited_by: str  # what sets the width: "pairs" | "drift" | "tail" | "floor"
    reason: str | None  # why an end is missing, when one is

    @property
    def solo_bounded(self) -> bool:
        return self.solo.bounded(self.floor)

    @property
    def shared_bounded(self) -> bool:
        return self.shared.bounded(self.floor)

    @property
    def measured(self) -> int:
        """Samples per phase a DF could use: the smaller phase's measured count."""
        return min(self.solo.measured, self.shared.measured)

    def label(self) -> str:
        """The confidence every report shows: the user's ("95%"), whatever a look's level."""
        return f"{100 * self.confidence:.4g}%"

    def look_note(self) -> str:
        """A sequential look's own level, said as a detail ("" for a single look)."""
        if math.isclose(self.level, 1.0 - self.confidence, rel_tol=1e-9):
            return ""
        return (
            f"sequential: this look's interval is at {100 * (1 - self.level):.4g}% (a repeated "
            f"confidence interval: over all looks together a false fail stays below "
            f"{100 * (1 - self.confidence) / 2:.3g}%)"
        )

    def method(self) -> str:
        """How the interval was made, in one line (the report's detail, not its headline)."""
        return (
            f"bootstrap over {self.units} {self.unit_kind}, each drawn whole (t, "
            f"{self.jackknife_dof:.0f} df), each end at least the within-round range of the "
            f"order statistics around p{self.p:g} widened for tail clustering (solo "
            f"{self.solo.clusters} clusters of {self.solo.exceedances} exceedances, shared "
            f"{self.shared.clusters} of {self.shared.exceedances}); nearest-rank percentiles, "
            f"MSER-5 warmup trim per round"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci)
        out["ci_single"] = list(self.ci_single)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        data = dict(data)
        data["ci"] = tuple(data["ci"])
        data["ci_single"] = tuple(data["ci_single"])
        data["solo"] = PhaseEvidence(**data["solo"])
        data["shared"] = PhaseEvidence(**data["shared"])
        return cls(**data)


def _halfwidths(
    ph: Prepared, p: float, level: float, inflation: float, inflation_up: float
) -> tuple[float, float, float]:
    """The phase's plausible range for its percentile at the look's level (normal critical
    value), below on its own dispersion and above on ``inflation_up``."""
    if not level > 0:
        return math.inf, math.inf, math.inf
    critical = norm_ppf(1.0 - level / 2.0)
    down = tail_halfwidths(ph.values, p, critical, inflation)[0]
    up = tail_halfwidths(ph.values, p, critical, inflation_up)[1]
    return critical, down, up


def _phase_evidence(
    ph: Prepared, tail: TailClusters, p: float, level: float, inflation_up: float
) -> PhaseEvidence:
    critical, down, up = _halfwidths(ph, p, level, tail.inflation, inflation_up)
    return PhaseEvidence(
        measured=ph.measured,
        kept=int(ph.values.size),
        trimmed=ph.trimmed,
        dropped=ph.dropped,
        rounds=int(np.unique(ph.labels).size),
        quantile=percentile(ph.values, p),
        exceedances=tail.exceedances,
        clusters=tail.clusters,
        theta=tail.theta,
        inflation=tail.inflation,
        inflation_up=inflation_up,
        critical=critical,
        half_down=down,
        half_up=up,
    )


def _units(solo: Prepared, shared: Prepared, paired: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """The resampling units for each phase's samples, and what they are.

    Rounds, paired by label when ``paired`` (solo round r with shared round r, next to each
    other in time); a phase with a single round is cut into contiguous batches, unpaired.
    """
    rounds_so, rounds_sh = np.unique(solo.labels), np.unique(shared.labels)
    if rounds_so.size >= 2 and rounds_sh.size >= 2:
        if paired:
            common = np.intersect1d(rounds_so.astype(str), rounds_sh.astype(str)).size
            kind = "round pairs" if common >= max(rounds_so.size, rounds_sh.size) / 2 else "rounds"
            return solo.labels.astype(str), shared.labels.astype(str), kind
        return (
            np.char.add("solo:", solo.labels.astype(str)),
            np.char.add("shared:", shared.labels.astype(str)),
            "rounds",
        )
    return (
        batch_labels(solo.labels, prefix="solo:"),
        batch_labels(shared.labels, prefix="shared:"),
        "batches",
    )


def _satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of variances ``v_i`` each with ``d_i`` degrees of freedom."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / d for v, d in parts if d > 0 and v > 0)
    if not math.isfinite(total) or total <= 0 or denom <= 0:
        return 1.0
    return max(1.0, total * total / denom)


@dataclass(frozen=True)
class _Width:
    half_lower: float  # log half-width below the estimate
    half_upper: float
    se_lower: float  # the standard error each half-width corresponds to (half / critical)
    se_upper: float
    critical_lower: float
    critical_upper: float
    jackknife: bool  # whether the between-unit spread (not the tail bound) set both ends


def _width(
    level: float,
    between: tuple[float, float],
    so: tuple[float, float, float],
    sh: tuple[float, float, float],
) -> _Width:
    """Each end's half-width: the wider of the between-unit one and the within-round tail
    bound (the two phases' plausible ranges at the look's normal critical value, in
    quadrature: the lower end reads the solo phase's upper range and the shared phase's lower
    one, the upper end the other two).

    The between-unit half-width is ``t * se``: the unit bootstrap's standard error, Student's
    t on the units' degrees of freedom (``g - 1``, fewer when few units carry the spread).
    The units are all that estimates drift between rounds, so no more degrees of freedom are
    claimed than they hold: a Satterthwaite split that counted the within-round part as known
    narrowed the interval on drifting models and false-failed bursty ones (3.0% on bursts of
    3.3 with independent drift, ``docs/statistics.md`` section 5).
    """
    variance, dof = between
    se_b = math.sqrt(variance) if math.isfinite(variance) and variance >= 0 else math.inf
    t_b = t_ppf(1.0 - level / 2.0, dof) if dof > 0 and level > 0 else math.inf
    half_b = t_b * se_b

    def side(a: float, b: float, crit: float) -> tuple[float, float, float, bool]:
        tail_half = math.hypot(a, b)
        if half_b >= tail_half:
            return half_b, se_b, t_b, True
        return tail_half, tail_half / crit, crit, False

    crit = max(so[0], sh[0])
    h_lo, se_lo, t_lo, j_lo = side(so[2], sh[1], crit)
    h_hi, se_hi, t_hi, j_hi = side(so[1], sh[2], crit)
    return _Width(h_lo, h_hi, se_lo, se_hi, t_lo, t_hi, j_lo and j_hi)


def _interval(centre: float, w: _Width, solo_ok: bool, shared_ok: bool) -> tuple[float, float]:
    half_lo, half_hi = w.half_lower, w.half_upper
    lo = math.exp(centre - half_lo) if solo_ok and math.isfinite(half_lo) else 0.0
    hi = math.exp(centre + half_hi) if shared_ok and math.isfinite(half_hi) else math.inf
    return lo, hi


def df_evidence(
    solo: Prepared,
    shared: Prepared,
    *,
    p: float,
    confidence: float,
    level: float,
    clock: str = "host",
    paired: bool = True,
) -> Evidence:
    """The evidence record of ``DF = q_p(shared) / q_p(solo)`` at the two-sided ``level``."""
    # How far the shared percentile may lie above its sample value uses the more clustered of
    # the two phases: a shared phase whose sample happened to hold few of its tail's runs
    # looks unclustered (a co-tenant that hits 1-2% of iterations in runs puts the p99 at
    # the edge of that slow mode), and the solo phase of the same tenant says what such a
    # sample can hide, and before either has shown many exceedances a prior clustering does
    # (``upper_dispersion``). A wrong pass is the costly error there. Every other range uses
    # its phase's own clustering, so a clear regression fails once the solo phase has its floor.
    tail_so = tail_clusters(solo.values, solo.labels, p)
    tail_sh = tail_clusters(shared.values, shared.labels, p)
    so = _phase_evidence(solo, tail_so, p, level, tail_so.inflation)
    sh = _phase_evidence(shared, tail_sh, p, level, upper_dispersion(tail_so, tail_sh))
    if so.quantile <= 0:
        raise StatisticsError(
            f"solo p{p:g} is {so.quantile} ms: a ratio needs a positive baseline latency"
        )
    value = sh.quantile / so.quantile
    centre = math.log(value) if value > 0 else -math.inf

    units_so, units_sh, kind = _units(solo, shared, paired)
    labels = sorted(set(units_so.tolist()) | set(units_sh.tolist()))
    leave_so = leave_one_out_percentiles(solo.values, units_so, p, labels)
    leave_sh = leave_one_out_percentiles(shared.values, units_sh, p, labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        leave = np.log(leave_sh) - np.log(leave_so)
    count_so = dict(zip(*np.unique(units_so, return_counts=True), strict=True))
    count_sh = dict(zip(*np.unique(units_sh, return_counts=True), strict=True))
    sizes = np.array([count_so.get(u, 0) + count_sh.get(u, 0) for u in labels], dtype=float)
    jack = grouped_jackknife_variance(centre, leave, sizes)
    # The variance between units is the unit bootstrap's (the jackknife's is biased upward
    # for a percentile); its degrees of freedom are the jackknife's (how many units carry it).
    boot = unit_bootstrap_variance(
        solo.values, units_so, shared.values, units_sh, p, paired=paired and kind != "batches"
    )
    between = (boot, jack[1]) if math.isfinite(boot) else jack

    def at(
        a: float, phases: tuple[PhaseEvidence, PhaseEvidence] | None = None
    ) -> tuple[tuple[float, float], _Width, int | None]:
        floor = floor_samples(p, a)
        if phases is not None:
            tails = [(ph.critical, ph.half_down, ph.half_up) for ph in phases]
        else:
            tails = [
                _halfwidths(prep, p, a, ph.inflation, ph.inflation_up)
                for prep, ph in ((solo, so), (shared, sh))
            ]
        w = _width(a, between, tails[0], tails[1])
        return _interval(centre, w, so.bounded(floor), sh.bounded(floor)), w, floor

    ci, width, floor = at(level, (so, sh))
    overall = 1.0 - confidence
    ci_single = ci if math.isclose(overall, level) else at(overall)[0]

    # How much of the between-unit spread the within-round tail bound does not explain: the
    # share of round-to-round variability (drift that the pairing did not cancel).
    within = 0.5 * (
        (so.half_up / so.critical) ** 2
        + (sh.half_down / sh.critical) ** 2
        + (so.half_down / so.critical) ** 2
        + (sh.half_up / sh.critical) ** 2
    )
    variance = between[0]
    drift = (
        max(0.0, 1.0 - within / variance)
        if math.isfinite(variance) and variance > 0 and math.isfinite(within)
        else 0.0
    )
    solo_ok, shared_ok = so.bounded(floor), sh.bounded(floor)
    if not (solo_ok and shared_ok):
        limited = "floor"
    elif width.jackknife and len(labels) >= DRIFT_MIN_PAIRS and drift >= 0.5:
        limited = "drift"
    elif width.jackknife:
        limited = "pairs"
    else:
        limited = "tail"
    return Evidence(
        p=float(p),
        clock=clock,
        confidence=float(confidence),
        level=float(level),
        estimate=value,
        ci=ci,
        ci_single=ci_single,
        se_lower=width.se_lower,
        se_upper=width.se_upper,
        critical_lower=width.critical_lower,
        critical_upper=width.critical_upper,
        units=len(labels),
        unit_kind=kind,
        jackknife_dof=float(jack[1]),
        floor=floor,
        solo=so,
        shared=sh,
        drift_share=drift,
        limited_by=limited,
        reason=_reason(p, level, floor, so, sh, ci),
    )


def _reason(
    p: float,
    level: float,
    floor: int | None,
    so: PhaseEvidence,
    sh: PhaseEvidence,
    ci: tuple[float, float],
) -> str | None:
    """Why an end of the interval is missing, with what would bring it (None: both exist)."""
    if floor is None:
        return "no error budget left for this look"
    one_sided = f"{100 * (1 - level / 2):.4g}%"

    measured = max(so.inflation, sh.inflation)

    def short(ph: PhaseEvidence) -> str:
        assumed = (
            ", assumed until more exceedances show it"
            if ph.inflation_up > measured * (1 + 1e-9)
            else ""
        )
        return (
            f"{ph.effective:.0f} independent of {ph.kept} kept (its p{p:g} exceedances came "
            f"in {ph.clusters} cluster(s) of {ph.exceedances}, dispersion "
            f"{ph.inflation_up:.2g}{assumed})"
        )

    def more(ph: PhaseEvidence) -> int:
        phase = "solo" if ph is so else "shared"
        return max(1, raw_floor(p, so, sh, floor, phase) - ph.kept)

    need = f"bounding a p{p:g} at one-sided {one_sided} needs {floor} independent samples"
    solo_ok, shared_ok = so.bounded(floor), sh.bounded(floor)
    if not solo_ok and not shared_ok:
        return (
            f"too few samples: {need}; solo has {short(so)}, shared {short(sh)}: about "
            f"{max(more(so), more(sh))} more per phase"
        )
    if not solo_ok:
        return (
            f"no lower bound: {need}; solo has {short(so)}: a fail needs about "
            f"{more(so)} more solo samples"
        )
    if not shared_ok:
        return (
            f"no upper bound: {need}; shared has {short(sh)}: a pass needs about "
            f"{more(sh)} more shared samples"
        )
    if not math.isfinite(ci[1]):
        return (
            f"no upper bound: the shared p{p:g}'s rank interval reaches past its largest "
            f"sample: shared has {short(sh)}; more samples are needed"
        )
    if ci[0] <= 0:
        return (
            f"no lower bound: the solo p{p:g}'s rank interval reaches past its largest "
            f"sample: solo has {short(so)}; more samples are needed"
        )
    return None


def percentile_interval(
    x: Any, segments: Any, p: float, confidence: float = 0.95, *, trim: bool = True
) -> tuple[float, float, float, int]:
    """One phase's ``p``-th percentile with its interval: ``(q, lo, hi, kept)`` in ms.

    The same construction as a DF's, for one phase alone: a delete-one-round jackknife of the
    log percentile (batches for a single round) with Student's t, each end at least the
    order-statistic range widened for tail clustering; ``hi`` is ``inf`` below the floor.
    """
    ph = prepare(x, segments, trim=trim, name="phase")
    level = 1.0 - confidence
    tail = tail_clusters(ph.values, ph.labels, p)
    ev = _phase_evidence(ph, tail, p, level, tail.inflation)
    units = (
        ph.labels.astype(str)
        if np.unique(ph.labels).size >= 2
        else batch_labels(ph.labels, prefix="")
    )
    labels = sorted(set(units.tolist()))
    leave = np.log(leave_one_out_percentiles(ph.values, units, p, labels))
    counts = dict(zip(*np.unique(units, return_counts=True), strict=True))
    sizes = np.array([counts[u] for u in labels], dtype=float)
    variance, dof = grouped_jackknife_variance(math.log(ev.quantile), leave, sizes)
    jack = t_ppf(1.0 - level / 2.0, dof) * math.sqrt(variance) if dof > 0 else math.inf
    centre = math.log(ev.quantile)
    lo = math.exp(centre - max(jack, ev.half_down))
    bounded = ev.bounded(floor_samples(p, level))
    hi = math.exp(centre + max(jack, ev.half_up)) if bounded else math.inf
    return ev.quantile, lo, hi, ev.kept
