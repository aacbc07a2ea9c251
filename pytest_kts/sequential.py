"""Adaptive stopping: look at the data a few times and stop as soon as every check is decided,
without letting the repeated looks inflate the false-fail rate, and within a time budget.

Two parts, both pure:

* :class:`SequentialTest` spends the error budget ``alpha = 1 - confidence`` of one check over
  its looks (Lan-DeMets alpha spending on the *information fraction* ``t = n / n_max``,
  Kim-DeMets power family ``alpha * t ** rho``), and turns each look's spending into the
  level of that look's interval with group-sequential boundaries for looks at *any* sample
  counts (the looks share their data, so crossing at one look mostly implies crossing at the
  next, and a union bound would double-count). ``n_max`` may change between looks (the time
  budget turned out shorter or longer than planned): the spending is re-planned on the new
  fraction, and the look declared final spends whatever is left.
* :func:`plan_looks` chooses the sample counts of the looks from what the budget allows: the
  first look no earlier than the sample floor of its own level (below it no distribution-free
  claim about a percentile is possible), the next ones growing geometrically to ``n_max``.

The probability that *any* look wrongly says ``fail`` is at most ``alpha / 2``, under the
normal approximation of the log DF estimates that the intervals rest on (the sample
percentile is asymptotically a mean, by its Bahadur representation, so the standardised
estimate follows a Brownian motion in information time). ``docs/statistics.md`` says what is
proved, what is approximated and what ``benchmarks/eval_verdicts.py`` simulates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pytest_kts.evidence import floor_samples
from pytest_kts.verdict import DegradationFactor, degradation

__all__ = [
    "Check",
    "SequentialTest",
    "evaluate",
    "first_decisive_n",
    "group_sequential_boundaries",
    "plan_looks",
]

_GRID = 301  # points of the numerical integration per look: boundaries within 1e-3 in z
DEFAULT_RHO = 1.0  # spend in proportion to samples: the earliest first look (docs/statistics.md)
DEFAULT_GROWTH = 2.0


@dataclass(frozen=True)
class Check:
    """One gate: ``DF(tenant, p, clock) < threshold``."""

    tenant: str
    p: float
    threshold: float
    clock: str = "host"


def _norm_sf(x: np.ndarray) -> np.ndarray:
    """Upper normal tail ``1 - Phi(x)``, vectorised (Numerical Recipes erfcc, rel. err 1.2e-7)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))  # fmt: skip
    erfc = t * np.exp(poly)
    sf: np.ndarray = np.where(x >= 0, 0.5 * erfc, 1.0 - 0.5 * erfc)
    return sf


def _norm_pdf(x: np.ndarray) -> np.ndarray:
    pdf: np.ndarray = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return pdf


@functools.lru_cache(maxsize=256)
def _boundaries_cached(increments: tuple[float, ...], info: tuple[float, ...]) -> np.ndarray:
    return group_sequential_boundaries(np.array(increments), np.array(info))


def group_sequential_boundaries(
    increments: Sequence[float] | np.ndarray, info: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """One-sided z boundaries ``c_k`` with ``P(Z_j < c_j for j < k, Z_k >= c_k) = increments[k]``.

    ``Z_k = S(I_k) / sqrt(I_k)`` with ``S`` a standard Brownian motion and ``I_k = info[k]``
    the information at look ``k`` (here: samples per phase; any increasing positive numbers,
    default ``1, 2, ..., K``, equal steps). This is the canonical joint distribution of an
    estimate whose precision grows with its sample count. Armitage-McPherson-Rowe recursion on
    a grid: the density of ``S`` on the continuation region is carried from look to look, and
    each ``c_k`` is found by bisection. An increment of 0 gives ``c_k = inf`` (no decision).
    """
    inc = np.asarray(increments, dtype=np.float64)
    levels = np.arange(1.0, inc.size + 1) if info is None else np.asarray(info, dtype=np.float64)
    if levels.shape != inc.shape:
        raise ValueError("increments and info must have the same length")
    if np.any(levels <= 0) or np.any(np.diff(levels) <= 0):
        raise ValueError(f"info must be positive and increasing, got {levels.tolist()}")
    out = np.empty(inc.size)
    # Density of S at the previous look, restricted to its continuation region, on grid u.
    u = np.zeros(1)
    w = np.ones(1)
    f = np.ones(1)  # S(0) = 0 with probability 1
    previous = 0.0
    for k in range(inc.size):
        step = math.sqrt(levels[k] - previous)
        spread = math.sqrt(levels[k])
        mass = w * f

        def crossing(
            b: float, u: np.ndarray = u, mass: np.ndarray = mass, sd: float = step
        ) -> float:
            return float(mass @ _norm_sf((b - u) / sd))

        if inc[k] <= 0:
            b = math.inf
        else:
            lo, hi = -10.0 * spread, 40.0 * spread
            for _ in range(60):  # crossing() falls monotonically in b
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if crossing(mid) > inc[k] else (lo, mid)
            b = 0.5 * (lo + hi)
        out[k] = b / spread
        top = min(b, 8.0 * spread)
        s = np.linspace(-8.0 * spread, top, _GRID)
        ws = np.full(_GRID, s[1] - s[0])
        ws[[0, -1]] *= 0.5  # trapezoid rule
        f = _norm_pdf((s[:, None] - u[None, :]) / step) @ mass / step
        u, w = s, ws
        previous = levels[k]
    return out


@dataclass
class SequentialTest:
    """The error budget of one check, spent over looks at growing sample counts.

    Call :meth:`level` once per look with that look's sample count ``n`` (samples per phase,
    the smaller side) and the count the budget is now expected to reach, ``n_max``. Spending
    is ``alpha * min(1, n / n_max) ** rho`` cumulatively, all of ``alpha`` at a look declared
    ``final`` (or once ``n >= n_max``); past looks keep what they spent. The returned level is
    the two-sided ``alpha`` of the look's interval: its one-sided half is the boundary that
    keeps the chance of a false fail *at any look so far* at the spent ``alpha / 2``.
    """

    confidence: float = 0.95
    rho: float = DEFAULT_RHO
    info: list[float] = field(default_factory=list)
    spent: list[float] = field(default_factory=list)  # cumulative, two-sided
    levels: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not self.rho > 0:
            raise ValueError(f"rho must be > 0, got {self.rho}")

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    @property
    def spent_total(self) -> float:
        return self.spent[-1] if self.spent else 0.0

    @property
    def exhausted(self) -> bool:
        """Whether the whole budget has been spent (no later look can decide anything)."""
        return self.spent_total >= self.alpha * (1 - 1e-12)

    def planned_spending(self, n: float, n_max: float, final: bool = False) -> float:
        """Cumulative two-sided budget a look at ``n`` of ``n_max`` would have spent."""
        if final or n >= n_max:
            return self.alpha
        share: float = (max(n, 0.0) / n_max) ** self.rho  # a real power: the base is >= 0
        return self.alpha * share

    def level(self, n: int, n_max: int, *, final: bool = False) -> float:
        """Record a look at ``n`` samples and return its interval's two-sided level."""
        if n <= 0 or n_max <= 0:
            raise ValueError(f"n and n_max must be positive, got {n}, {n_max}")
        if self.info and n <= self.info[-1]:
            raise ValueError(f"looks need new samples: {n} after {self.info[-1]}")
        cumulative = max(self.planned_spending(n, n_max, final), self.spent_total)
        self.info.append(float(n))
        self.spent.append(cumulative)
        increments = np.diff(np.array([0.0, *self.spent])) / 2.0  # one side: false fails
        z = _boundaries_cached(tuple(increments.tolist()), tuple(self.info))[-1]
        level = float(2.0 * _norm_sf(np.array(z))) if math.isfinite(z) else 0.0
        self.levels.append(level)
        return level

    def describe(self) -> str:
        looks = ", ".join(
            f"n={n:.0f}: spent {s:.3g}, level {lv:.3g}"
            for n, s, lv in zip(self.info, self.spent, self.levels, strict=False)
        )
        return f"alpha {self.alpha:g} spent as alpha*(n/n_max)^{self.rho:g} over looks [{looks}]"


def first_decisive_n(
    p: float,
    confidence: float,
    n_max: int,
    *,
    theta: float = 1.0,
    rho: float = DEFAULT_RHO,
    spent: float = 0.0,
) -> int | None:
    """Smallest sample count whose look could decide: its spending reaches its own floor.

    The floor (:func:`pytest_kts.stats.min_samples`) at a look's level ``a`` is the number of
    independent samples that bounding the ``p``-th percentile at one-sided ``1 - a/2`` needs;
    with tail clusters of extremal index ``theta`` a look needs ``floor / theta`` samples.
    The level of a first look is its spending (later looks get a little more, which this
    ignores: it only makes the plan conservative). ``None`` when even ``n_max`` is short.
    """
    alpha = 1.0 - confidence
    theta = min(max(theta, 1e-3), 1.0)

    def decisive(n: int) -> bool:
        a = alpha if n >= n_max else max(alpha * (n / n_max) ** rho - spent, 0.0)
        floor = floor_samples(p, a)
        return floor is not None and n * theta >= floor

    if not decisive(n_max):
        return None
    lo, hi = 1, n_max
    while lo < hi:  # decisive() is monotone in n: more samples, more budget, lower floor
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decisive(mid) else (mid + 1, hi)
    return lo


def plan_looks(
    p: float,
    confidence: float,
    n_now: int,
    n_max: int,
    *,
    theta: float = 1.0,
    rho: float = DEFAULT_RHO,
    growth: float = DEFAULT_GROWTH,
    spent: float = 0.0,
) -> list[int]:
    """Sample counts (per phase) of the looks still to come, the last one at ``n_max``.

    The first is the earliest that could decide (:func:`first_decisive_n`, and past ``n_now``);
    the next grow by ``growth``; a look that would leave less than a ``growth``-th step to
    ``n_max`` is merged into the last. Few looks: each costs budget, and geometric steps keep
    the time to a verdict within a constant factor of the earliest possible one. When no look
    within ``n_max`` can reach its floor, one look at ``n_max`` (it will say what is missing).
    """
    if n_max <= n_now:
        return [n_max] if n_max > 0 else []
    first = first_decisive_n(p, confidence, n_max, theta=theta, rho=rho, spent=spent)
    if first is None:
        return [n_max]
    looks = [max(first, n_now + 1)]
    while looks[-1] * growth < n_max:
        looks.append(math.ceil(looks[-1] * growth))
    looks = [n for n in looks if n < n_max] + [n_max]
    if len(looks) > 2 and n_max < looks[-2] * math.sqrt(growth):
        del looks[-2]  # a last step much shorter than the others buys little: merge it
    return looks


def evaluate(
    check: Check,
    solo: np.ndarray,
    shared: np.ndarray,
    *,
    solo_segments: np.ndarray | None,
    shared_segments: np.ndarray | None,
    level: float,
    confidence: float = 0.95,
    note: str = "",
    trim: bool = True,
    on_inconclusive: str = "warn",
) -> DegradationFactor:
    """The degradation factor for ``check`` with the two-sided level ``level`` of this look.

    ``result.verdict(check.threshold)``: ``"pass"``/``"fail"`` are final (stop measuring this
    check); ``"inconclusive"`` means another look is needed or, at the last look, that the
    budget ran out undecided (the gate's ``on_inconclusive`` policy applies).
    """
    return degradation(
        solo,
        shared,
        p=check.p,
        confidence=confidence,
        clock=check.clock,
        solo_segments=solo_segments,
        shared_segments=shared_segments,
        trim=trim,
        alpha=level,
        on_inconclusive=on_inconclusive,
        note=note,
    )
