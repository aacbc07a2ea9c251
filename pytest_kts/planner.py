"""The look planner of an adaptive run: pure functions of where the run stands.

* :func:`choose_round_length`: how many samples each phase of a round gets, trading the
  degrees of freedom that more round pairs give the interval against the phase switches and
  warmup they cost.
* :func:`next_look` and :func:`is_final`: what to measure next, given the samples so far, what
  the budget can still reach and the looks already planned (``sequential.plan_looks``), and
  which look spends the rest of the error budget. The runner does what these say; they are
  tested without a backend.
* :func:`power_hint`: what deciding an undecided check would take, read from its
  :class:`~pytest_kts.evidence.Evidence`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from pytest_kts.evidence import Evidence, floor_samples, raw_floor
from pytest_kts.sequential import DEFAULT_RHO, SequentialTest, plan_looks
from pytest_kts.stats import t_ppf

__all__ = [
    "ROUND_MIN",
    "Look",
    "Standing",
    "Stop",
    "choose_round_length",
    "is_final",
    "next_look",
    "power_hint",
]


# ---------------------------------------------------------------------------------------------
# Rounds: how long each phase of a round is
# ---------------------------------------------------------------------------------------------

ROUND_MIN = 50  # MSER-5 needs ten batches of five to find a warmup
ROUND_MAX = 2000
_ROUND_GRID = (50, 60, 75, 100, 125, 150, 200, 250, 300, 400, 500, 700, 1000, 1500, 2000)


def choose_round_length(
    *,
    n_first: int,
    seconds_per_pair: float,
    phase_overhead_s: float,
    phases_per_round: int,
    warmup_per_round: float,
    level: float,
) -> int:
    """Samples per phase in each round: as many round pairs as pay for their phase switches.

    The interval at a look rests on a t with one degree of freedom per round pair less one,
    so more, shorter rounds narrow it; but every round costs ``phases_per_round`` phase
    switches (``phase_overhead_s`` each: the start barrier, the stop, the slowest iteration)
    and its own warmup (``warmup_per_round`` samples trimmed). For each candidate length
    ``m`` the time to reach a given width at the first look (``n_first`` samples per phase,
    level ``level``) is proportional to ``t(R - 1)^2 x (time per sample, switches included)
    / (share kept after warmup)`` with ``R = n_first / m`` round pairs; the smallest wins.
    A pure function of measured rates: the runner re-plans with it after calibration.
    """
    if n_first <= 0 or not level > 0:
        return ROUND_MIN
    best, best_cost = ROUND_MIN, math.inf
    for m in _ROUND_GRID:
        if m > max(ROUND_MIN, n_first // 2):
            break
        pairs = max(n_first / m, 2.0)
        critical = t_ppf(1.0 - level / 2.0, pairs - 1.0)
        sampling = m * max(seconds_per_pair, 1e-9)
        per_sample = (sampling + phases_per_round * phase_overhead_s) / sampling
        kept = max(1.0 - warmup_per_round / m, 0.5)
        cost = critical * critical * per_sample / kept
        if cost < best_cost:
            best, best_cost = m, cost
    return best


# ---------------------------------------------------------------------------------------------
# The look planner: what to do next, as a pure function of where the run stands
# ---------------------------------------------------------------------------------------------

# Looks closer than this to the last one add too little information to pay for a round.
MIN_LOOK_GAIN = 0.1
# After a look short of its floor, the next comes at least this many times later.
REPLAN_STEP = 1.25


@dataclass(frozen=True)
class Standing:
    """Where an adaptive run stands, as the look planner sees it (samples per phase)."""

    n_now: int  # measured samples per phase of the undecided SLO tenants (the smallest)
    n_reachable: int  # what the budget can still reach (per phase), at the rates so far
    n_cap: int  # --kts-max-iterations
    planned: tuple[int, ...]  # looks still planned (sample counts), empty before the first
    p: float
    confidence: float
    theta: float  # share of raw samples that count toward the floor (clustering x kept)
    rho: float = DEFAULT_RHO
    spent: float = 0.0  # error budget spent so far (the most of any undecided check)
    short_of_floor: bool = False  # the last look had too few independent samples for a claim


@dataclass(frozen=True)
class Look:
    """Measure until ``target`` samples per phase, then look; ``final`` spends what is left."""

    target: int
    final: bool
    plan: tuple[int, ...]  # the whole plan of looks from here, target first


@dataclass(frozen=True)
class Stop:
    """No look can be bought: judge what there is as the last look (if not yet judged)."""

    reason: str


def next_look(st: Standing) -> Look | Stop:
    """The next look: plan the looks if none are planned (or the next is already behind),
    keep the plan otherwise, clipped to what the budget now reaches; stop when nothing more
    can be measured. The one place that decides which look is final."""
    if st.n_reachable <= st.n_now:
        why = (
            f"the budget of {st.n_cap} iterations per tenant and phase ran out"
            if st.n_now >= st.n_cap
            else "the time budget ran out"
        )
        return Stop(why)
    # Re-plan when no look is planned ahead, and after a look that fell short of its floor:
    # the clustering measured by then says where the first decisive look really is, which may
    # come well before the next planned doubling.
    if not st.planned or st.planned[0] <= st.n_now or st.short_of_floor:
        plan = plan_looks(
            st.p,
            st.confidence,
            st.n_now,
            st.n_reachable,
            theta=st.theta,
            rho=st.rho,
            spent=st.spent,
        )
        if st.short_of_floor:
            # Never a look a few samples after one that fell short: each costs a round and a
            # share of the error budget. At least a step of REPLAN_STEP, at most the budget.
            step = min(math.ceil(st.n_now * REPLAN_STEP), st.n_reachable)
            plan = [max(plan[0], step), *(n for n in plan[1:] if n > step)]
    else:
        plan = [n for n in st.planned if n < st.n_reachable] + [st.n_reachable]
    if not plan:
        return Stop("the time budget ran out")
    target = plan[0]
    return Look(target=target, final=target >= st.n_reachable, plan=tuple(plan))


def is_final(planned_final: bool, n_now: int, n_reachable: int) -> bool:
    """Whether the look about to be judged must spend the whole budget: it was planned as
    the last, or what the budget can still buy after it is too little to pay for a look."""
    gain = n_reachable - n_now
    return planned_final or gain < max(MIN_LOOK_GAIN * n_reachable, 1)


# ---------------------------------------------------------------------------------------------
# The power hint: what deciding would take, read from the evidence record
# ---------------------------------------------------------------------------------------------


def _predicted_half(ev: Evidence, n: float, level: float, lower: bool, round_length: int) -> float:
    """The half-width a look at ``n`` samples per phase would have at ``level``, at the noise
    this evidence shows (its standard error shrinking as 1/sqrt(n), one round pair more per
    ``round_length`` samples)."""
    se = ev.se_lower if lower else ev.se_upper
    if not math.isfinite(se) or ev.measured <= 0:
        return math.inf
    scaled = se * math.sqrt(ev.measured / max(n, 1.0))
    pairs = max(n / max(round_length, 1), 2.0)
    return t_ppf(1.0 - level / 2.0, pairs - 1.0) * scaled


def power_hint(
    ev: Evidence,
    threshold: float,
    *,
    budget_spent: bool,
    n_budget: int,
    round_length: int,
    seconds_per_sample: float | None = None,
) -> str:
    """What deciding ``ev`` against ``threshold`` would take, in one sentence; never "0 more".

    * The estimate at the threshold: no sample count decides it; say so, and what thresholds
      this budget could decide.
    * Otherwise the samples per phase (raw, as measured) at which an interval at a fresh
      run's own level (its last look's, after an early look's spending) would clear the
      threshold at today's noise; when that is no more than this run measured, this run's
      error budget, not its samples, was the limit: say what a fresh run needs.
    * When round-to-round variability set the width, say so: more rounds, not longer ones.
    """
    est = ev.estimate
    if not (est > 0 and math.isfinite(est)):
        return "no estimate to project from"
    gap = abs(math.log(est) - math.log(threshold))
    lower = est > threshold  # a fail needs the lower end above the threshold
    level = _fresh_level(ev.confidence)
    n_now = ev.measured

    def needed() -> float:
        # The predicted half-width falls as n grows (fewer samples' noise, more pairs' degrees
        # of freedom): the smallest n whose half-width clears the gap, by bisection.
        if gap <= 0:
            return math.inf
        lo, hi = 1.0, 1e8
        if _predicted_half(ev, hi, level, lower, round_length) > gap:
            return math.inf
        while hi - lo > 1.0:
            mid = math.sqrt(lo * hi) if hi > 4 * lo else 0.5 * (lo + hi)
            if _predicted_half(ev, mid, level, lower, round_length) <= gap:
                hi = mid
            else:
                lo = mid
        return hi

    def decidable_at(n: int) -> tuple[float, float]:
        lo = est * math.exp(-_predicted_half(ev, n, level, True, round_length))
        hi = est * math.exp(_predicted_half(ev, n, level, False, round_length))
        return lo, hi

    lo_b, hi_b = decidable_at(max(n_budget, n_now))
    budget_n = max(n_budget, n_now)
    parts = []
    if math.isfinite(hi_b):
        parts.append(f"a pass against {hi_b:.3g} or above")
    if lo_b > 0:
        parts.append(f"a fail against {lo_b:.3g} or below")
    reach = (
        f"; this budget ({budget_n} samples per phase) could decide {', '.join(parts)}"
        if parts
        else ""
    )

    def seconds(n: int) -> str:
        if not seconds_per_sample or not math.isfinite(seconds_per_sample):
            return ""
        return f" (about {n * seconds_per_sample:.0f} s of phases)"

    if gap < 0.01:
        return (
            f"the estimate {est:.3g} sits at the threshold {threshold:g}: no sample count "
            f"decides it{reach}"
        )
    need = needed()
    if not math.isfinite(need):
        # No spread to project from: below the floor the interval has no end to scale. The
        # floor (in raw samples, at this tail's clustering) comes first.
        floor = floor_samples(ev.p, level) or 0
        raw = max(raw_floor(ev.p, ev.solo, ev.shared, floor, ph) for ph in ("solo", "shared"))
        return (
            f"too few independent samples to project from: a fresh run needs at least {raw} "
            f"samples per phase{seconds(raw)} before its interval has both ends (a p{ev.p:g} "
            f"bound at its last look needs {floor} independent ones){reach}"
        )
    need_n = max(math.ceil(need), (floor_samples(ev.p, level) or 0))

    drift = (
        "; round-to-round variability sets the width: more rounds narrow it, longer ones do not"
        if ev.limited_by == "drift"
        else ""
    )
    if need_n <= n_now or budget_spent:
        return (
            f"this run's error budget is spent; a fresh run would need about {need_n} samples "
            f"per phase{seconds(need_n)} to decide against {threshold:g} at this noise{drift}"
        )
    return (
        f"at this noise, deciding against {threshold:g} needs about {need_n - n_now} more "
        f"samples per phase ({need_n} in all){seconds(need_n - n_now)}{drift}{reach}"
    )


@functools.lru_cache(maxsize=32)
def _fresh_level(confidence: float) -> float:
    """The level a fresh adaptive run's last look gets: its plan's three looks at n/4, n/2 and
    n spend part of the budget early (the boundaries do not depend on n's scale)."""
    test = SequentialTest(confidence)
    test.level(1, 4)
    test.level(2, 4)
    return test.level(4, 4, final=True)
