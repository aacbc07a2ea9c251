"""Adaptive stopping: look at the data after each round and stop as soon as every check is
decided, without letting the repeated looks inflate the false-fail rate.

Each look ``k`` spends a share ``alpha_k`` of the error budget ``alpha = 1 - confidence``
(``sum_k alpha_k <= alpha``, Lan-DeMets alpha spending). By default the spending is turned
into per-look interval levels with group-sequential boundaries, which account for the looks
sharing their data; ``boundary="union"`` uses the spending itself as each look's level
(union bound: valid whatever the dependence between looks, but wider). Either way the
probability that *any* look wrongly says ``fail`` is at most ``alpha / 2`` (for the
group-sequential boundaries, under the normal approximation of the log DF estimates that
the intervals themselves rest on; our simulations in ``benchmarks/`` check it end to end).
``docs/statistics.md`` gives the simulations behind the defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from pytest_kts.verdict import DegradationFactor, degradation

__all__ = ["Check", "SequentialPlan", "evaluate", "group_sequential_boundaries"]

SPENDINGS = ("power", "equal")
BOUNDARIES = ("group-sequential", "union")
_GRID = 301  # points of the numerical integration per look: boundaries within 1e-3 in z


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
    return np.where(x >= 0, 0.5 * erfc, 1.0 - 0.5 * erfc)


def _norm_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@functools.lru_cache(maxsize=32)
def _boundaries_cached(increments: tuple[float, ...]) -> np.ndarray:
    return group_sequential_boundaries(np.array(increments))


def group_sequential_boundaries(increments: np.ndarray) -> np.ndarray:
    """One-sided z boundaries ``c_k`` with ``P(Z_j < c_j for j < k, Z_k >= c_k) = increments[k]``.

    ``Z_k = S_k / sqrt(k)`` with ``S_k`` a sum of ``k`` independent standard normals: the
    canonical joint distribution of a statistic whose information grows by equal steps, here
    the log DF estimate after equal rounds (the sample percentile is asymptotically a mean,
    by its Bahadur representation). Armitage-McPherson-Rowe recursion on a grid: the density
    of ``S_k`` on the continuation region is carried from look to look and each ``c_k`` found
    by bisection. An increment of 0 gives ``c_k = inf`` (no decision at that look).
    """
    inc = np.asarray(increments, dtype=np.float64)
    out = np.empty(inc.size)
    # Density of S_{k-1} restricted to the continuation region, on grid u with weights w.
    u = np.zeros(1)
    w = np.ones(1)
    f = np.ones(1)  # S_0 = 0 with probability 1
    for k in range(1, inc.size + 1):
        mass = w * f

        def crossing(b: float, u: np.ndarray = u, mass: np.ndarray = mass) -> float:
            return float(mass @ _norm_sf(b - u))

        if inc[k - 1] <= 0:
            b = math.inf
        else:
            lo, hi = -10.0 * math.sqrt(k), 40.0 * math.sqrt(k)
            for _ in range(56):  # crossing() falls monotonically in b; 50 sqrt(k) / 2**56
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if crossing(mid) > inc[k - 1] else (lo, mid)
            b = 0.5 * (lo + hi)
        out[k - 1] = b / math.sqrt(k)
        top = min(b, 8.0 * math.sqrt(k))
        s = np.linspace(-8.0 * math.sqrt(k), top, _GRID)
        ws = np.full(_GRID, s[1] - s[0])
        ws[[0, -1]] *= 0.5  # trapezoid rule
        f = _norm_pdf(s[:, None] - u[None, :]) @ mass
        u, w = s, ws
    return out


class SequentialPlan:
    """How the error budget ``1 - confidence`` is spread over looks ``1, 2, ...``.

    Spending: with ``max_looks`` known (the runner's round budget), the cumulative budget
    spent by look ``k`` is ``alpha * (k / max_looks) ** rho`` (Kim-DeMets power family;
    ``spending="equal"`` is ``rho = 1``); ``rho > 1`` keeps most of it for the last looks,
    where the samples are. ``max_looks=None`` (open-ended) spends ``alpha / (k (k + 1))`` at
    look ``k``, which sums to ``alpha`` over infinitely many looks. Looks before
    ``first_look`` spend nothing; looks past ``max_looks`` get nothing (inconclusive).

    Boundaries: ``"group-sequential"`` (default, needs ``max_looks``) turns the spending
    into per-look interval levels with the canonical joint distribution of the looks
    (Lan-DeMets), so that the probability of a false fail *at any look* is the spent
    ``alpha / 2`` although each look's own level is larger than its spending. ``"union"``
    uses each look's spending as its level (Bonferroni): valid whatever the dependence
    between looks, at the price of wider intervals (for 32 looks and rho = 2 the last look's
    z is 2.96 instead of 2.24).
    """

    def __init__(
        self,
        confidence: float = 0.95,
        max_looks: int | None = None,
        *,
        spending: str = "power",
        rho: float = 2.0,
        first_look: int = 1,
        boundary: str = "group-sequential",
    ) -> None:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if max_looks is not None and max_looks < 1:
            raise ValueError(f"max_looks must be >= 1 or None, got {max_looks}")
        if spending not in SPENDINGS:
            raise ValueError(f"spending must be one of {SPENDINGS}, got {spending!r}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if first_look < 1 or (max_looks is not None and first_look > max_looks):
            raise ValueError(f"first_look must be in [1, max_looks], got {first_look}")
        self.confidence = float(confidence)
        self.alpha = 1.0 - self.confidence
        self.max_looks = max_looks
        self.spending = spending
        self.rho = 1.0 if spending == "equal" else float(rho)
        self.first_look = int(first_look)
        # Open-ended plans have no information fraction to build boundaries on.
        self.boundary = boundary if max_looks is not None else "union"
        self._levels: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"SequentialPlan(confidence={self.confidence}, max_looks={self.max_looks}, "
            f"spending={self.spending!r}, rho={self.rho}, first_look={self.first_look}, "
            f"boundary={self.boundary!r})"
        )

    def _cumulative(self, look: int) -> float:
        """Budget spent by the end of ``look`` (0 before the first counted look)."""
        k = look - self.first_look + 1  # counted looks so far
        if k <= 0:
            return 0.0
        if self.max_looks is None:
            return self.alpha * (1.0 - 1.0 / (k + 1))  # telescoping sum of 1/(j(j+1))
        total = self.max_looks - self.first_look + 1
        return self.alpha * min(1.0, k / total) ** self.rho

    def alpha_for_look(self, look: int) -> float:
        """Share of the two-sided budget spent at look ``look`` (1-based); sums to at most
        ``1 - confidence`` over all looks."""
        if look < 1:
            raise ValueError(f"looks are numbered from 1, got {look}")
        if self.max_looks is not None and look > self.max_looks:
            return 0.0
        return max(0.0, self._cumulative(look) - self._cumulative(look - 1))

    def level_for_look(self, look: int) -> float:
        """Two-sided ``alpha`` of the interval to use at look ``look``.

        Equal to :meth:`alpha_for_look` for union boundaries; larger for group-sequential
        ones (the looks share most of their data, so crossing at one look mostly implies
        crossing at the next, and the union bound double-counts).
        """
        spent = self.alpha_for_look(look)
        if self.boundary == "union" or spent == 0.0:
            return spent
        if self._levels is None:
            assert self.max_looks is not None
            inc = np.array([self.alpha_for_look(k) for k in range(1, self.max_looks + 1)])
            z = _boundaries_cached(tuple(inc / 2.0))  # one side: the false-fail side
            self._levels = 2.0 * _norm_sf(z)
        return float(self._levels[look - 1])

    def spent(self, look: int) -> float:
        """Total two-sided budget spent through ``look``; never exceeds ``1 - confidence``."""
        last = look if self.max_looks is None else min(look, self.max_looks)
        return math.fsum(self.alpha_for_look(k) for k in range(1, last + 1))


def evaluate(
    check: Check,
    solo: np.ndarray,
    shared: np.ndarray,
    *,
    solo_segments: np.ndarray | None,
    shared_segments: np.ndarray | None,
    plan: SequentialPlan,
    look: int,
    trim: bool = True,
    on_inconclusive: str = "warn",
    full_interval: bool = True,
) -> DegradationFactor:
    """The degradation factor for ``check`` at look ``look`` with this look's error share.

    Use ``result.verdict(check.threshold)``: ``"pass"``/``"fail"`` are final (stop measuring
    this check), ``"inconclusive"`` means another round is needed, or, past the plan's last
    look, that the budget ran out undecided (the gate's ``on_inconclusive`` policy applies).
    ``full_interval=False`` skips the bootstrap when the verdict is inconclusive anyway (same
    verdict, narrower rank-based interval reported; for simulations that look many times).
    """
    alpha = plan.level_for_look(look)
    result = degradation(
        solo,
        shared,
        p=check.p,
        confidence=plan.confidence,
        clock=check.clock,
        solo_segments=solo_segments,
        shared_segments=shared_segments,
        trim=trim,
        alpha=alpha,
        on_inconclusive=on_inconclusive,
        undecided_at=None if full_interval else check.threshold,
    )
    reason = result.reason
    if alpha == 0.0 and look < plan.first_look:
        reason = f"look {look} precedes the plan's first decision look {plan.first_look}"
    elif alpha == 0.0:
        reason = (
            f"look {look} is past the plan's last look ({plan.max_looks}): no error budget "
            "left, the budget ran out undecided"
        )
    looks = plan.max_looks or "open-ended"
    method = f"{result.method}; sequential look {look} of {looks} ({plan!r})"
    return dataclasses.replace(result, method=method, reason=reason)
