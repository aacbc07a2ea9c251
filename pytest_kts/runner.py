"""Runs a scenario: interleaved rounds of solo and shared phases, adaptively when SLOs are given.

Each round runs every tenant solo (the others resident but idle), then all together; the
order flips every round (solo..shared, shared..solo) so that drift in clocks and temperature
falls on both sides. Without SLOs a fixed number of iterations per phase is measured. With
SLOs the runner looks at the evidence after every round and stops as soon as every check has
a verdict, or when the budget is spent; the looks spend the error rate
(:mod:`pytest_kts.sequential`) so that looking often does not make false fails likelier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from pytest_kts.backends.base import Backend, PhasePlan, TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.errors import ConfigError
from pytest_kts.protocol import LineReader, Sample
from pytest_kts.results import PhaseWindow, ScenarioResult, TenantResult
from pytest_kts.samples import group
from pytest_kts.sequential import Check, SequentialPlan, evaluate


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

    def add(self, tenant: str, reader: LineReader) -> None:
        self.records += reader.samples
        self.readers.setdefault(tenant, LineReader()).merge(reader)


def make_backend(settings: RunSettings, env: Mapping[str, str] | None = None) -> Backend:
    """The backend for these settings; ``env`` goes to every local tenant (the GPU to use)."""
    if settings.cluster:
        from pytest_kts.backends.kubernetes import make_cluster_backend

        if settings.sharing != "timeslice":
            raise ConfigError(
                f"--kts-sharing {settings.sharing} is for the local backend; on a cluster the "
                "device plugin's configuration decides how pods share a GPU (manifests/)"
            )
        return make_cluster_backend(settings)
    if settings.sharing == "streams":
        from pytest_kts.backends.streams import StreamsBackend

        return StreamsBackend(env=env)
    from pytest_kts.backends.local import LocalBackend

    return LocalBackend(sharing=settings.sharing, env=env)


def plan_checks(slo: Mapping[str, float] | None, p: float, tenants: Sequence[str]) -> list[Check]:
    checks = []
    for tenant, threshold in (slo or {}).items():
        if tenant not in tenants:
            raise ConfigError(f"SLO names tenant {tenant!r}, which the scenario does not declare")
        if not threshold > 0:
            raise ConfigError(f"SLO threshold for {tenant!r} must be positive, got {threshold}")
        checks.append(Check(tenant=tenant, p=p, threshold=float(threshold)))
    return checks


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
) -> ScenarioResult:
    """Run solo and shared phases of ``tenants`` on ``device`` and return every sample."""
    if len(tenants) < 2:
        raise ConfigError(
            f"scenario {name!r} declares {len(tenants)} tenant(s); co-location needs at least 2"
        )
    names = [t.name for t in tenants]
    checks = plan_checks(slo, p, names)
    adaptive = bool(checks)
    focal = {c.tenant for c in checks}
    per_round = settings.round_iterations
    target_total = settings.max_iterations if adaptive else settings.iterations
    max_rounds = max(1, math.ceil(target_total / per_round))
    plan = SequentialPlan(confidence=settings.confidence, max_looks=max_rounds)
    budget = budget or Budget()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    collected = _Collected()
    decisions: dict[int, Any] = {}
    stop_reason = ""
    phase_seconds = 0.0
    sampler = telemetry_factory() if telemetry_factory else None
    backend = backend or make_backend(settings)

    def run(plan_: PhasePlan) -> None:
        nonlocal phase_seconds
        if progress:
            progress.phase_started(plan_.phase, plan_.round, plan_.tenants)
        output = backend.run_phase(plan_, settings.timeout)
        for tenant, reader in output.readers.items():
            collected.add(tenant, reader)
            if progress:
                progress.samples(tenant, plan_.phase, len(reader.samples))
        window = PhaseWindow(
            plan_.phase, plan_.round, plan_.tenants, output.started_ns, output.ended_ns
        )
        collected.windows.append(window)
        phase_seconds += window.seconds
        budget.spent += window.seconds

    with backend:
        backend.start(tenants, device)
        if sampler is not None:
            sampler.start()
        try:
            done = 0
            for rnd in range(max_rounds):
                n = min(per_round, target_total - done) if not adaptive else per_round
                # Adaptive runs give solo time after the first round only to tenants with an SLO:
                # a background tenant's solo samples decide nothing, and cost GPU-seconds.
                judged = [t for t in names if t in focal] if adaptive and rnd > 0 else names
                solos = [PhasePlan("solo", rnd, {t: n}) for t in judged]
                shared = PhasePlan("shared", rnd, dict.fromkeys(names, n))
                order = [*solos, shared] if rnd % 2 == 0 else [shared, *reversed(solos)]
                for phase_plan in order:
                    run(phase_plan)
                check_colocated = getattr(backend, "check_colocated", None)
                if callable(check_colocated) and rnd == 0:
                    check_colocated()
                done += n
                if not adaptive:
                    if done >= target_total:
                        stop_reason = f"fixed protocol: {done} iterations per tenant and phase"
                        break
                    continue
                grouped = group(collected.records, names)
                for k, check in enumerate(checks):
                    ts = grouped[check.tenant]
                    solo, shared_ = ts.solo, ts.shared
                    df = evaluate(
                        check,
                        solo.latency(check.clock),
                        shared_.latency(check.clock),
                        solo_segments=solo.segments(),
                        shared_segments=shared_.segments(),
                        plan=plan,
                        look=rnd + 1,
                    )
                    decisions[k] = (df, rnd + 1)
                    if progress and math.isfinite(df.value):
                        progress.estimate(check.tenant, df.value, df.ci)
                verdicts = [decisions[k][0].verdict(c.threshold) for k, c in enumerate(checks)]
                if all(v != "inconclusive" for v in verdicts):
                    stop_reason = f"every SLO decided after {rnd + 1} round(s)"
                    break
                # Stop before a round that would overrun the budget, judging by the rounds so far.
                next_round = phase_seconds / (rnd + 1)
                if phase_seconds + next_round > settings.max_seconds:
                    stop_reason = (
                        f"undecided: another round would overrun the test's budget of "
                        f"{settings.max_seconds:.0f} s"
                    )
                    break
                if budget.left < next_round:
                    stop_reason = (
                        f"undecided: the session's budget of {budget.seconds:.0f} s ran out"
                    )
                    break
            else:
                if adaptive:
                    stop_reason = (
                        f"undecided: the budget of {settings.max_iterations} iterations per "
                        "tenant and phase ran out"
                    )
        finally:
            telemetry = sampler.stop() if sampler is not None else None
        facts = backend.facts()

    grouped = group(collected.records, names)
    results: dict[str, TenantResult] = {}
    for spec in tenants:
        meta = dict(facts.get("tenants", {}).get(spec.name, {}))
        reader = collected.readers.get(spec.name, LineReader())
        results[spec.name] = TenantResult(
            spec=spec,
            samples=grouped[spec.name],
            meta=meta,
            accounting=reader.accounting(),
            confidence=settings.confidence,
            on_inconclusive=settings.inconclusive,
        )
    check_rows = []
    for k, check in enumerate(checks):
        df, looks = decisions.get(k, (None, 0))
        if df is not None:
            results[check.tenant].sequential[(float(check.p), check.clock)] = df
        check_rows.append(
            {
                "tenant": check.tenant,
                "p": check.p,
                "threshold": check.threshold,
                "clock": check.clock,
                "value": None if df is None else df.value,
                "ci": None if df is None else list(df.ci),
                "verdict": "inconclusive" if df is None else df.verdict(check.threshold),
                "looks": looks,
                "alpha": None if df is None else df.alpha,
                "reason": None if df is None else df.reason,
            }
        )
    if progress:
        progress.finished()
    return ScenarioResult(
        name=name,
        device=device,
        tenants=results,
        windows=collected.windows,
        machine=dict(machine or {}),
        backend=facts,
        telemetry=telemetry,
        checks=check_rows,
        gpu_seconds=phase_seconds,
        stop_reason=stop_reason,
        confidence=settings.confidence,
        started_at=started_at,
    )
