"""Runs a scenario: interleaved solo and shared phases, adaptively when SLOs are given.

One file on purpose: it is one loop (calibrate, plan the looks, run the phases, judge, finish)
over one ``_Scenario``'s state, and every step reads and writes that state; splitting it would
pass the state between modules without making any step simpler.

Without SLOs (the fixed protocol) every tenant is measured ``iterations`` times in each phase,
in rounds of ``round_iterations``: each round runs every tenant solo (the others resident but
idle), then all together, with the order flipped every round so that drift in clocks and
temperature falls on both sides.

With SLOs (adaptive) the tenants that carry one decide everything:

1. **Calibration.** A short first round measures each SLO tenant's rate solo and shared.
2. **A look plan the budget can finish.** From those rates and the time left
   (``--kts-max-seconds``, the session's ``--kts-budget-seconds``) and ``--kts-max-iterations``
   the runner derives how many samples per phase the budget can reach, and plans a few looks
   at sample counts growing geometrically, the first no earlier than the sample floor of its
   own level (:func:`pytest_kts.sequential.plan_looks`). The whole error budget is spent by
   the last look (:class:`pytest_kts.sequential.SequentialTest`); a budget that turns out
   shorter is re-planned, and the look that ends the run spends what is left.
3. **Phases sized by the SLO tenants.** Each look is one round: a solo phase per undecided
   SLO tenant, and a shared phase that ends when every undecided SLO tenant has its samples.
   Every other tenant runs through the shared phase as background, whatever its period, and
   never lengthens it; it gets no solo phase (one short one at the end, charged to the
   budget, gives the report its solo figures). Solo and shared counts stay balanced.
4. **A hard budget.** Every phase has a time share; a phase that would overrun is cut short
   and its samples are kept. A test's phases never exceed ``--kts-max-seconds``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from pytest_kts import planner, sequential
from pytest_kts.backends import make_backend
from pytest_kts.backends.base import Backend, PhaseOutput, PhasePlan, TenantSpec
from pytest_kts.causal import measure as causal_measure
from pytest_kts.config import RunSettings
from pytest_kts.constants import PHASES
from pytest_kts.errors import ConfigError
from pytest_kts.evidence import Evidence, floor_samples
from pytest_kts.protocol import LineReader, Sample
from pytest_kts.results import CheckOutcome, PhaseWindow, ScenarioResult, TenantResult
from pytest_kts.samples import PhaseSamples, group
from pytest_kts.sequential import Check, SequentialTest, evaluate
from pytest_kts.stats import WARMUP_MAX_FRACTION, tail_clusters, trim_warmup
from pytest_kts.verdict import DegradationFactor

__all__ = ["Budget", "ProgressSink", "make_backend", "plan_checks", "run_scenario"]

# Calibration: samples per SLO tenant and phase in the first round, and its share of the budget.
CALIBRATION_ITERATIONS = 100
CALIBRATION_SHARE = 0.15
# A phase that is not the last may run this much longer than planned before it is cut.
PHASE_SLACK = 2.0
PHASE_SLACK_S = 1.0
# The solo profile of a tenant without an SLO: a short phase at the end, for the report.
PROFILE_ITERATIONS = 50
PROFILE_SHARE = 0.05
PROFILE_MAX_S = 2.0
# Leave-one-out rounds: at least this many rounds' worth of samples per arm.
EXPLAIN_MIN_ROUNDS = 8
# The extremal index the look plan assumes at most (see _theta).
THETA_MAX = 0.6
# Time kept free at the end of every phase for its stop to arrive.
STOP_MARGIN_S = 0.05


class ProgressSink(Protocol):
    def phase_started(self, phase: str, round: int, tenants: Sequence[str]) -> None: ...
    def samples(self, tenant: str, phase: str, n: int) -> None: ...
    def estimate(self, tenant: str, df_value: float, ci: tuple[float, float]) -> None: ...
    def finished(self) -> None: ...


@dataclass
class Budget:
    """Seconds of phases left for the whole session; shared by every scenario in it."""

    seconds: float = math.inf
    spent: float = 0.0

    @property
    def left(self) -> float:
        return self.seconds - self.spent


@dataclass
class _Collected:
    records: list[Sample] = field(default_factory=list)
    readers: dict[str, LineReader] = field(default_factory=dict)
    windows: list[PhaseWindow] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, phase) -> n
    active: dict[tuple[str, str], float] = field(default_factory=dict)  # seconds measuring
    overheads: list[float] = field(default_factory=list)  # per phase: wall minus measuring
    longest_ms: float = 0.0  # the longest iteration seen: what stopping a phase may take

    def add(self, output: PhaseOutput) -> None:
        phase = output.plan.phase
        busiest = 0.0
        for tenant, reader in output.readers.items():
            self.records += reader.samples
            self.readers.setdefault(tenant, LineReader()).merge(reader)
            key = (tenant, phase)
            self.counts[key] = self.counts.get(key, 0) + len(reader.samples)
            if reader.samples:
                self.longest_ms = max(self.longest_ms, max(s.host_ms for s in reader.samples))
                span = (reader.samples[-1].end_ns - reader.samples[0].start_ns) / 1e9
                self.active[key] = self.active.get(key, 0.0) + max(span, 0.0)
                if tenant in output.plan.measured:
                    busiest = max(busiest, span)
        self.overheads.append(max(output.wall_seconds - busiest, 0.0))

    def n(self, tenant: str, phase: str) -> int:
        return self.counts.get((tenant, phase), 0)

    def pairs(self, tenant: str) -> int:
        """Samples per phase that a DF of ``tenant`` can use: the smaller side."""
        return min(self.n(tenant, "solo"), self.n(tenant, "shared"))

    def rate(self, tenant: str, phase: str) -> float:
        """Samples per second while measuring (0 when unknown)."""
        n, seconds = self.n(tenant, phase), self.active.get((tenant, phase), 0.0)
        if n < 2 or seconds <= 0:
            return 0.0
        return (n - 1) / seconds

    def overhead(self) -> float:
        """Seconds a phase costs beyond its measuring: barrier, stop, the slowest iteration."""
        return max(sum(self.overheads) / len(self.overheads), 0.05) if self.overheads else 0.25


def plan_checks(slo: Mapping[str, float] | None, p: float, tenants: Sequence[str]) -> list[Check]:
    checks = []
    for tenant, threshold in (slo or {}).items():
        if tenant not in tenants:
            raise ConfigError(f"SLO names tenant {tenant!r}, which the scenario does not declare")
        if not threshold > 0:
            raise ConfigError(f"SLO threshold for {tenant!r} must be positive, got {threshold}")
        checks.append(Check(tenant=tenant, p=p, threshold=float(threshold)))
    return checks


@dataclass
class _CheckState:
    check: Check
    test: SequentialTest
    df: DegradationFactor | None = None
    looks: int = 0
    decided: bool = False
    final: bool = False
    rounds: int = 0
    power: str | None = None


class _Scenario:
    """One run of one scenario: the phases, the budget, the looks."""

    def __init__(
        self,
        names: list[str],
        settings: RunSettings,
        backend: Backend,
        budget: Budget,
        progress: ProgressSink | None,
    ) -> None:
        self.names = names
        self.settings = settings
        self.backend = backend
        self.budget = budget
        self.progress = progress
        self.collected = _Collected()
        self.spent = 0.0  # wall seconds of this test's phases
        self.rounds = 0
        self.notes: list[str] = []
        self.cut_phases = 0
        self.round_length: int | None = None  # samples per phase of a look's round
        # Subset phases (experiments): the tenants present -> their samples, kept apart from
        # the scenario's own solo and shared phases so no verdict reads them by accident.
        self.arms: dict[tuple[str, ...], list[Sample]] = {}
        self.explain = False
        self.p = 99.0
        self.background: tuple[str, ...] = ()

    def arm_samples(self, tenant: str) -> dict[tuple[str, ...], PhaseSamples]:
        """``tenant``'s samples in each subset phase (experiment) it took part in."""
        return {
            arm: PhaseSamples.from_records(tenant, "shared", records)
            for arm, records in self.arms.items()
            if tenant in arm and any(r.tenant == tenant for r in records)
        }

    # -- time ------------------------------------------------------------------------------
    def left(self) -> float:
        """Seconds of phases this test may still spend."""
        return min(self.settings.max_seconds - self.spent, self.budget.left)

    def limit_reason(self) -> str:
        if self.budget.left <= self.settings.max_seconds - self.spent:
            return f"the session's budget of {self.budget.seconds:.0f} s ran out"
        return f"the test's budget of {self.settings.max_seconds:.0f} s ran out"

    # -- phases ----------------------------------------------------------------------------
    def run(self, plan: PhasePlan, arm: tuple[str, ...] | None = None) -> PhaseOutput | None:
        """Run ``plan`` within its share (and what is left); ``None`` when no time is left.

        ``arm`` (the tenants present, sorted) files a shared phase's samples under that
        experiment instead of the scenario's shared phase.
        """
        # A stopped phase still finishes the iteration in flight: keep room for the longest.
        left = self.left() - self.collected.longest_ms / 1e3 - STOP_MARGIN_S
        if left <= STOP_MARGIN_S:
            return None
        share = left if plan.max_seconds is None else min(plan.max_seconds, left)
        plan = PhasePlan(plan.phase, plan.round, plan.iterations, max_seconds=share)
        if self.progress:
            self.progress.phase_started(plan.phase, plan.round, plan.tenants)
        output = self.backend.run_phase(plan, self.settings.timeout)
        if arm is None:
            self.collected.add(output)
        else:
            for reader in output.readers.values():
                self.arms.setdefault(arm, []).extend(reader.samples)
                if reader.samples:
                    longest = max(s.host_ms for s in reader.samples)
                    self.collected.longest_ms = max(self.collected.longest_ms, longest)
        if self.progress:
            for tenant, reader in output.readers.items():
                self.progress.samples(tenant, plan.phase, len(reader.samples))
        self.collected.windows.append(
            PhaseWindow(plan.phase, plan.round, plan.tenants, output.started_ns, output.ended_ns)
        )
        self.spent += output.wall_seconds
        self.budget.spent += output.wall_seconds
        self.cut_phases += int(output.cut)
        return output

    def run_round(
        self,
        plans: list[PhasePlan],
        final: bool,
        arms: Sequence[tuple[str, ...] | None] | None = None,
    ) -> bool:
        """Run a round's phases in order (reversed every other round); False if time ran out.

        Each phase's share of the time left is proportional to its expected length; a phase
        that is not part of the run's last round may take at most ``PHASE_SLACK`` times that,
        so that a slower-than-planned round leaves time for the re-planned rest. ``arms``
        names, per plan, the experiment its samples belong to (``None``: the scenario's own).
        """
        tagged = list(zip(plans, arms or [None] * len(plans), strict=True))
        if self.rounds % 2 == 1:
            tagged = tagged[::-1]  # shared first, solos reversed
        expected = [self.expected_seconds(p) for p, _ in tagged]
        for i, (plan, arm) in enumerate(tagged):
            left = self.left()
            proportional = left * expected[i] / max(sum(expected[i:]), 1e-9)
            if not final:
                proportional = min(proportional, PHASE_SLACK * expected[i] + PHASE_SLACK_S)
            share = plan.max_seconds if plan.max_seconds is not None else proportional
            plan = PhasePlan(plan.phase, plan.round, plan.iterations, max_seconds=share)
            if self.run(plan, arm) is None:
                return False
        self.rounds += 1
        return True

    def expected_seconds(self, plan: PhasePlan) -> float:
        """How long ``plan`` should take at the rates measured so far."""
        longest = 0.0
        for tenant in plan.measured:
            rate = self.collected.rate(tenant, plan.phase) or self.collected.rate(tenant, "solo")
            target = plan.iterations[tenant]
            longest = max(longest, target / rate if rate > 0 else math.inf)
        if not math.isfinite(longest):
            return self.left()
        return longest + self.collected.overhead()


def run_scenario(
    name: str,
    tenants: Sequence[TenantSpec],
    settings: RunSettings,
    slo: Mapping[str, float] | None = None,
    p: float = 99,
    progress: ProgressSink | None = None,
    *,
    device: str,
    backend: Backend | None = None,
    budget: Budget | None = None,
    telemetry_factory: Callable[[], Any] | None = None,
    machine: Mapping[str, Any] | None = None,
    keep_backend: bool = False,
    explain: bool = False,
) -> ScenarioResult:
    """Run solo and shared phases of ``tenants`` on ``device`` and return every sample.

    ``keep_backend``: the backend is a session's pooled one and stays up after the run
    (its tenants serve the next scenario that declares them); otherwise it is closed.
    ``explain``: measure who takes every SLO tenant's tail by leaving each co-tenant out in
    turn (done anyway for a failed check of a tenant with two or more co-tenants).
    """
    if len(tenants) < 2:
        raise ConfigError(
            f"scenario {name!r} declares {len(tenants)} tenant(s); co-location needs at least 2"
        )
    names = [t.name for t in tenants]
    checks = plan_checks(slo, p, names)
    budget = budget or Budget()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sampler = telemetry_factory() if telemetry_factory else None
    backend = backend or make_backend(settings)
    rho = sequential.DEFAULT_RHO
    states = [_CheckState(c, SequentialTest(settings.confidence, rho=rho)) for c in checks]
    run = _Scenario(names, settings, backend, budget, progress)
    run.explain, run.p = explain, p

    def body() -> str:
        backend.start_timeout_s = settings.timeout
        backend.start(tenants, device)
        if sampler is not None:
            sampler.start()
        if states:
            return _adaptive(run, states, p)
        return _fixed(run)

    try:
        if keep_backend:
            stop_reason = body()
        else:
            with backend:
                stop_reason = body()
    finally:
        telemetry = sampler.stop() if sampler is not None else None
    facts = backend.facts()

    grouped = group(run.collected.records, names)
    results: dict[str, TenantResult] = {}
    for spec in tenants:
        meta = dict(facts.get("tenants", {}).get(spec.name, {}))
        reader = run.collected.readers.get(spec.name, LineReader())
        results[spec.name] = TenantResult(
            spec=spec,
            samples=grouped[spec.name],
            meta=meta,
            accounting=reader.accounting(),
            confidence=settings.confidence,
            on_inconclusive=settings.inconclusive,
            arms=run.arm_samples(spec.name),
        )
    check_rows = []
    for state in states:
        check, df = state.check, state.df
        if df is not None:
            df = dataclasses.replace(df, tenant=check.tenant)
            results[check.tenant].sequential[(float(check.p), check.clock)] = df
        check_rows.append(
            CheckOutcome(
                tenant=check.tenant,
                p=check.p,
                clock=check.clock,
                threshold=check.threshold,
                df=df,
                looks=state.looks,
                rounds=state.rounds,
                final=state.final,
                power=state.power,
                spending=state.test.describe(),
            )
        )
    if progress:
        progress.finished()
    if run.cut_phases:
        run.notes.append(
            f"{run.cut_phases} phase(s) ended by their time share before their targets "
            "(samples kept)"
        )
    if run.notes:
        stop_reason += "; " + "; ".join(run.notes)
    return ScenarioResult(
        name=name,
        device=device,
        tenants=results,
        windows=run.collected.windows,
        machine=dict(machine or {}),
        backend=facts,
        telemetry=telemetry,
        checks=check_rows,
        gpu_seconds=run.spent,
        stop_reason=stop_reason,
        confidence=settings.confidence,
        started_at=started_at,
        background=run.background,
    )


def _fixed(run: _Scenario) -> str:
    """Every tenant ``iterations`` times per phase, in rounds; each phase an equal time share."""
    settings, names = run.settings, run.names
    total, per_round = settings.iterations, settings.round_iterations
    rounds = max(1, math.ceil(total / per_round))
    done = 0
    for rnd in range(rounds):
        n = min(per_round, total - done)
        plans = [PhasePlan("solo", rnd, {t: n}) for t in names]
        plans.append(PhasePlan("shared", rnd, dict.fromkeys(names, n)))
        phases_left = (rounds - rnd) * len(plans)
        share = run.left() / phases_left
        plans = [PhasePlan(p.phase, p.round, p.iterations, max_seconds=share) for p in plans]
        if not run.run_round(plans, final=True):
            return f"stopped: {run.limit_reason()} after {done} iterations per tenant and phase"
        if rnd == 0:
            run.backend.check_colocated()
        done += n
    return f"fixed protocol: {done} iterations per tenant and phase"


def _adaptive(run: _Scenario, states: list[_CheckState], p: float) -> str:
    settings, col = run.settings, run.collected
    focal = list(dict.fromkeys(s.check.tenant for s in states))

    def undecided() -> list[str]:
        return list(dict.fromkeys(s.check.tenant for s in states if not s.decided))

    # 1. Calibration: a short round gives the rates the plan needs (its samples count too).
    calib = min(settings.round_iterations, CALIBRATION_ITERATIONS)
    plans = _round_plans(run, 0, calib, focal)
    share = max(run.left() * CALIBRATION_SHARE / len(plans), 0.5)
    plans = [PhasePlan(x.phase, x.round, x.iterations, max_seconds=share) for x in plans]
    if not run.run_round(plans, final=False):
        return _finish(run, states, p, f"undecided: {run.limit_reason()} during calibration")
    run.backend.check_colocated()

    # 2. Rounds as short as pay for their phase switches; looks planned in samples per phase.
    planned: tuple[int, ...] = ()
    while True:
        active = undecided()
        n_now = min(col.pairs(t) for t in active)
        if run.round_length is None:
            run.round_length = _round_length(run, active, p)
        short = [
            s.df.evidence
            for s in states
            if not s.decided and s.df is not None and s.df.evidence.limited_by == "floor"
        ]
        standing = planner.Standing(
            n_now=n_now,
            n_reachable=_reachable(run, active),
            n_cap=settings.max_iterations,
            planned=planned,
            p=p,
            confidence=settings.confidence,
            # After a look short of its floor, plan on the share that look really counted.
            theta=min((_counted_share(ev) for ev in short), default=_theta(run, active, p)),
            rho=states[0].test.rho,
            spent=max(s.test.spent_total for s in states if not s.decided),
            short_of_floor=bool(short),
        )
        step = planner.next_look(standing)
        if isinstance(step, planner.Stop):
            _judge(run, states, max(standing.n_reachable, 1), final=True)
            return _finish(run, states, p, f"undecided: {_limit(run, step.reason)}")
        planned = step.plan
        _run_to(run, active, step.target, final=step.final)
        n_after = min(col.pairs(t) for t in active)
        n_reach = _reachable(run, active)
        final = planner.is_final(step.final, n_after, n_reach)
        _judge(run, states, max(n_reach, 1), final=final)
        if not undecided():
            looks = max(s.looks for s in states)
            return _finish(
                run, states, p, f"every SLO decided at look {looks} ({run.rounds} rounds)"
            )
        if final or all(s.test.exhausted for s in states if not s.decided):
            # What ended it: the iteration cap (reached, or close enough that no further look
            # was worth its share of the error budget), else the time.
            why = (
                f"the budget of {settings.max_iterations} iterations per tenant and phase ran out"
                if max(n_after, n_reach) >= (1 - planner.MIN_LOOK_GAIN) * settings.max_iterations
                else run.limit_reason()
            )
            return _finish(run, states, p, f"undecided: {why}")
        planned = planned[1:]


def _limit(run: _Scenario, why: str) -> str:
    return run.limit_reason() if why == "the time budget ran out" else why


def _round_plans(run: _Scenario, rnd: int, target: int, tenants: list[str]) -> list[PhasePlan]:
    """One round: a solo phase per SLO tenant up to ``target`` samples, then a shared phase in
    which every other tenant is background (target 0)."""
    col = run.collected
    plans = []
    for t in tenants:
        need = max(target, col.n(t, "shared")) - col.n(t, "solo")
        if need > 0:
            plans.append(PhasePlan("solo", rnd, {t: need}))
    shared = {t: max(target - col.n(t, "shared"), 0) if t in tenants else 0 for t in run.names}
    if any(shared.values()):
        plans.append(PhasePlan("shared", rnd, shared))
    return plans


def _run_to(run: _Scenario, tenants: list[str], target: int, *, final: bool) -> None:
    """Rounds of about ``run.round_length`` samples per phase until every one of ``tenants``
    has ``target`` samples in both phases (or time runs out). The look's last round is the
    run's last when the look is final, so it may use what time is left."""
    col = run.collected
    length = run.round_length or planner.ROUND_MIN
    while True:
        n_now = min(col.pairs(t) for t in tenants)
        left = target - n_now
        if left <= 0:
            return
        rounds = max(1, round(left / length))
        step = math.ceil(left / rounds)
        plans = _round_plans(run, run.rounds, n_now + step, tenants)
        if not plans or not run.run_round(plans, final=final and rounds == 1):
            return


def _round_length(run: _Scenario, tenants: list[str], p: float) -> int:
    """The round length for the looks, from the calibration's rates, overhead and trimming."""
    col = run.collected
    solo = [col.rate(t, "solo") for t in tenants]
    shared = [col.rate(t, "shared") for t in tenants]
    if min(solo + shared) <= 0:
        return max(run.settings.round_iterations, planner.ROUND_MIN)
    per_pair = sum(1.0 / r for r in solo) + 1.0 / min(shared)
    grouped = group(col.records, run.names)
    trimmed = []
    for t in tenants:
        for phase in PHASES:
            data = grouped[t].phase(phase)
            values = data.latency("host")
            if len(values) >= 20:
                trimmed.append(trim_warmup(values, data.segments())[2])
    n_max = max(_reachable(run, tenants), 1)
    first = sequential.first_decisive_n(
        p, run.settings.confidence, n_max, theta=_theta(run, tenants, p)
    )
    level = (1.0 - run.settings.confidence) * min(1.0, (first or n_max) / n_max)
    return planner.choose_round_length(
        n_first=first or n_max,
        seconds_per_pair=per_pair,
        phase_overhead_s=col.overhead(),
        phases_per_round=len(tenants) + 1,
        warmup_per_round=max(trimmed, default=0),
        level=max(level, 1e-4),
    )


def _reachable(run: _Scenario, tenants: list[str]) -> int:
    """Samples per phase that every one of ``tenants`` can reach within the budget."""
    col, settings = run.collected, run.settings
    n_now = min(col.pairs(t) for t in tenants)
    solo_rates = [col.rate(t, "solo") for t in tenants]
    shared_rates = [col.rate(t, "shared") for t in tenants]
    if min(solo_rates + shared_rates) <= 0:
        return n_now
    # One more sample pair costs a solo sample of each tenant, one after the other, and a
    # shared phase as long as its slowest tenant needs; every round costs one phase switch
    # per phase (its overhead), so shorter rounds reach fewer samples.
    per_pair = sum(1.0 / r for r in solo_rates) + 1.0 / min(shared_rates)
    length = run.round_length or planner.ROUND_MIN
    per_pair += col.overhead() * (len(tenants) + 1) / length
    spare = run.left() - col.overhead() * (len(tenants) + 1)
    more = int(max(spare, 0.0) / per_pair)
    return min(settings.max_iterations, n_now + more)


def _theta(run: _Scenario, tenants: list[str], p: float) -> float:
    """The share of raw samples that count toward the floor, as the look plan assumes it.

    Warmup trimming removes some samples of every round, and clustering in the tail (the
    dispersion ``F`` of the exceedance count: theta here is ``1 / F``) makes the rest count
    less. Both are read off the data so far (the tail's own clusters,
    ``stats.tail_clusters``); theta is kept within [0.5, 0.8] and
    trimming at >= 10%: a calibration of 100 samples sees almost no tail, and an H200's solo
    FFT showed theta 0.83 over 600 samples, so a plan that trusted theta = 1 put its first
    look below the floor and lost a round.
    """
    grouped = group(run.collected.records, run.names)
    thetas, trimmed = [], []
    for t in tenants:
        per_phase = []
        for phase in PHASES:
            data = grouped[t].phase(phase)
            values = data.latency("host")
            if len(values) >= 20:
                kept, labels, cut = trim_warmup(values, data.segments())
                per_phase.append(1.0 / tail_clusters(kept, labels, p).inflation)
                trimmed.append(cut / len(values))
        # A fail needs the solo phase's floor, a pass the shared one's: the earliest look
        # that can decide either way follows the phase whose tail clusters less.
        thetas.append(max(per_phase, default=1.0))
    theta = min(max(min(thetas, default=THETA_MAX), 0.5), THETA_MAX)
    kept_share = 1.0 - min(max(max(trimmed, default=0.1), 0.1), WARMUP_MAX_FRACTION)
    return theta * kept_share


def _counted_share(ev: Evidence) -> float:
    """The share of measured samples a look counted toward its floor, in the phase that
    would decide first (the one whose tail clusters less)."""
    best = max(ev.solo.effective, ev.shared.effective)
    return min(max(best / max(ev.measured, 1), 0.02), 1.0)


def _judge(run: _Scenario, states: list[_CheckState], n_max: int, final: bool) -> None:
    """A look for every undecided check that has new samples since its last look."""
    grouped = group(run.collected.records, run.names)
    for state in states:
        if state.decided:
            continue
        check = state.check
        n = run.collected.pairs(check.tenant)
        if n <= 0 or (state.test.info and n <= state.test.info[-1]):
            continue
        level = state.test.level(n, max(n_max, n), final=final)
        ts = grouped[check.tenant]
        solo, shared = ts.solo, ts.shared
        df = evaluate(
            check,
            solo.latency(check.clock),
            shared.latency(check.clock),
            solo_segments=solo.segments(),
            shared_segments=shared.segments(),
            level=level,
            confidence=run.settings.confidence,
            note=f"sequential look {len(state.test.info)} ({state.test.describe()})",
            on_inconclusive=run.settings.inconclusive,
        )
        state.df, state.looks, state.final = df, len(state.test.info), final
        state.rounds = run.rounds
        state.decided = df.verdict(check.threshold) != "inconclusive"
        if run.progress and math.isfinite(df.value):
            run.progress.estimate(check.tenant, df.value, df.ci)


def _explain(run: _Scenario, states: list[_CheckState]) -> str | None:
    """Who took the tail, by experiment: leave-one-out rounds for the tenants that need it.

    A failed SLO check of a tenant with two or more co-tenants (every SLO tenant with
    ``explain``) gets rounds of the full shared phase next to one shared phase per co-tenant
    left out, interleaved like every round and charged to what is left of the budget; the
    effect of each co-tenant is then the DF of adding it (``causal.py``). Returns a note for
    the stop reason, or ``None`` when nothing was run.
    """
    focal = [
        s.check.tenant
        for s in states
        if (run.explain or (s.df is not None and s.df.verdict(s.check.threshold) == "fail"))
        and len(run.names) >= 3
    ]
    focal = list(dict.fromkeys(focal))
    if not focal:
        return None
    full = tuple(sorted(run.names))
    arms = [
        tuple(t for t in full if t != left_out)
        for left_out in full
        if any(f != left_out for f in focal)
    ]
    col = run.collected
    # As many samples per arm as decided the check, and at least twice what a claim at p
    # needs: an effect the size of the check's own is then decided in the same rounds.
    floor = floor_samples(run.p, 1.0 - run.settings.confidence) or 0
    least = max(EXPLAIN_MIN_ROUNDS * planner.ROUND_MIN, 2 * floor)
    target = min(run.settings.max_iterations, max(least, min(col.pairs(t) for t in focal)))
    length = run.round_length or planner.ROUND_MIN
    rounds = 0

    def have(arm: tuple[str, ...], tenant: str) -> int:
        return sum(1 for r in run.arms.get(arm, ()) if r.tenant == tenant)

    def undecided() -> bool:
        """Whether some focal tenant's tail grew and no co-tenant's removal decidedly lowers
        it yet: then more rounds, up to the iteration cap, may decide who took it."""
        for f in focal:
            solo = PhaseSamples.from_records(f, "solo", col.records)
            answer = causal_measure(
                f, solo, run.arm_samples(f), p=run.p, confidence=run.settings.confidence
            )
            if answer is not None and answer.grew and answer.top() is None:
                return True
        return False

    while True:
        short = [
            (arm, f) for arm in (full, *arms) for f in focal if f in arm and have(arm, f) < target
        ]
        if not short:
            # The planned samples are in. An effect not yet decided gets twice as many, as
            # long as the cap and the budget allow: the question is worth the time left.
            if target >= run.settings.max_iterations or not undecided():
                break
            target = min(run.settings.max_iterations, 2 * target)
            continue
        plans, tags = [], []
        for arm in (full, *arms):
            measured = {t: (length if t in focal else 0) for t in arm}
            if not any(measured.values()):
                continue
            plans.append(PhasePlan("shared", run.rounds, measured))
            tags.append(arm)
        if not run.run_round(plans, final=False, arms=tags):
            break
        rounds += 1
    if not rounds:
        return "no time was left to measure who took the tail (leave-one-out)"
    return (
        f"{rounds} leave-one-out round(s) for {', '.join(focal)} (each co-tenant left out in "
        "turn, next to the full shared phase)"
    )


def _finish(run: _Scenario, states: list[_CheckState], p: float, reason: str) -> str:
    """Say what deciding would need; measure who took a failed check's tail; give tenants
    without an SLO a short solo profile."""
    col = run.collected
    note = _explain(run, states)
    if note:
        run.notes.append(note)
    for state in states:
        if state.decided or state.df is None:
            continue
        t = state.check.tenant
        rates = [col.rate(t, "solo"), col.rate(t, "shared")]
        per_sample = sum(1.0 / r for r in rates) if min(rates) > 0 else None
        state.power = planner.power_hint(
            state.df.evidence,
            state.check.threshold,
            budget_spent=state.test.exhausted,
            n_budget=_reachable(run, [t]),
            round_length=run.round_length or planner.ROUND_MIN,
            seconds_per_sample=per_sample,
        )
    background = [t for t in run.names if col.n(t, "solo") == 0]
    run.background = tuple(background)
    profiled = []
    for t in background:
        share = min(
            run.left(), max(1.0, min(PROFILE_SHARE * run.settings.max_seconds, PROFILE_MAX_S))
        )
        if share <= 0.05:
            break
        plan = PhasePlan("solo", run.rounds, {t: PROFILE_ITERATIONS}, max_seconds=share)
        if run.run(plan) is None:
            break
        profiled.append(t)
    if profiled:
        run.rounds += 1
        run.notes.append(
            f"tenants without an SLO got one short solo profile phase each (round "
            f"{run.rounds - 1}): {', '.join(profiled)}"
        )
    return reason
