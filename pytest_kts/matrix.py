"""The contention matrix: each tenant's DF next to each co-tenant, and next to all of them.

Every tenant runs solo; then every pair shares the GPU; then (with three or more) all of them
at once. Rounds repeat that with the order reversed every other round, as in a scenario. The
cell (row A, column B) is A's degradation factor while B was its only co-tenant.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tabulate import tabulate

from pytest_kts.backends.base import Backend, PhasePlan, TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.errors import ConfigError
from pytest_kts.protocol import Sample
from pytest_kts.results import PhaseWindow
from pytest_kts.runner import STOP_MARGIN_S, Budget
from pytest_kts.samples import PhaseSamples
from pytest_kts.verdict import DegradationFactor, degradation

ALL = "all"


@dataclass
class MatrixResult:
    name: str
    device: str
    tenants: list[str]
    solo: dict[str, PhaseSamples]
    # (tenant, its co-tenants sorted) -> that tenant's samples in phases with exactly them
    shared: dict[tuple[str, tuple[str, ...]], PhaseSamples]
    windows: list[PhaseWindow] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    started_at: str = ""
    confidence: float = 0.95

    def co_tenants(self, tenant: str, column: str) -> tuple[str, ...]:
        if column == ALL:
            return tuple(sorted(t for t in self.tenants if t != tenant))
        return (column,)

    def df(
        self, tenant: str, column: str, p: float = 99, clock: str = "host"
    ) -> DegradationFactor | None:
        """``tenant``'s DF with ``column`` (a tenant, or ``"all"``) as its co-tenants."""
        shared = self.shared.get((tenant, self.co_tenants(tenant, column)))
        solo = self.solo[tenant]
        if (
            shared is None
            or tenant == column
            or not (solo.has_clock(clock) and shared.has_clock(clock))
        ):
            return None
        return degradation(
            solo.latency(clock),
            shared.latency(clock),
            p=p,
            confidence=self.confidence,
            clock=clock,
            solo_segments=solo.segments(),
            shared_segments=shared.segments(),
        )

    def columns(self) -> list[str]:
        cols = list(self.tenants)
        if len(self.tenants) > 2:
            cols.append(ALL)
        return cols

    def values(self, p: float = 99, clock: str = "host") -> list[list[float]]:
        """DF point estimates, rows = tenants, columns = :meth:`columns` (nan on the diagonal)."""
        out = []
        for row in self.tenants:
            line = []
            for col in self.columns():
                df = self.df(row, col, p, clock)
                line.append(math.nan if df is None else float(df.value))
            out.append(line)
        return out

    def table(self, p: float = 99, clock: str = "host", fmt: str = "simple") -> str:
        rows = []
        for row in self.tenants:
            cells: list[str] = [row]
            for col in self.columns():
                df = self.df(row, col, p, clock)
                if df is None:
                    cells.append("-")
                else:  # the interval its verdict would use: only the ends that exist
                    cells.append(f"{df.value:.2f} {df.interval()}")
            rows.append(cells)
        headers = [f"DF p{p:g} ({clock}) of row, next to column", *self.columns()]
        table: str = tabulate(rows, headers=headers, tablefmt=fmt)
        return table


def run_matrix(
    name: str,
    tenants: Sequence[TenantSpec],
    settings: RunSettings,
    backend: Backend,
    *,
    device: str,
    include_all: bool = True,
    machine: dict[str, Any] | None = None,
    budget: Budget | None = None,
    progress: Any = None,  # a runner.ProgressSink: the same status line as a scenario's
) -> MatrixResult:
    """Every tenant solo, every pair shared (and all together), in interleaved rounds.

    Each phase gets an equal share of the time left (``--kts-max-seconds`` for the test, the
    session's ``budget``); a phase whose share ends is cut and keeps its samples, and the
    rounds stop when no time is left, so a matrix stays inside its budget like a scenario.
    """
    if len(tenants) < 2:
        raise ConfigError("a contention matrix needs at least 2 tenants")
    names = [t.name for t in tenants]
    per_round = settings.round_iterations
    rounds = max(1, math.ceil(settings.iterations / per_round))
    groups: list[tuple[str, ...]] = [tuple(pair) for pair in itertools.combinations(names, 2)]
    if include_all and len(names) > 2:
        groups.append(tuple(names))
    solo_records: dict[str, list[Sample]] = {t: [] for t in names}
    shared_records: dict[tuple[str, tuple[str, ...]], list[Sample]] = {}
    windows: list[PhaseWindow] = []
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    seconds = 0.0
    budget = budget or Budget()
    phases_left = rounds * (len(names) + len(groups))
    with backend:
        backend.start(tenants, device)
        for rnd in range(rounds):
            plans = [PhasePlan("solo", rnd, {t: per_round}) for t in names]
            plans += [PhasePlan("shared", rnd, dict.fromkeys(g, per_round)) for g in groups]
            if rnd % 2:
                plans.reverse()
            for plan in plans:
                left = min(settings.max_seconds - seconds, budget.left)
                if left <= STOP_MARGIN_S:
                    break
                share = left / phases_left
                phases_left -= 1
                plan = PhasePlan(plan.phase, plan.round, plan.iterations, max_seconds=share)
                if progress:
                    progress.phase_started(plan.phase, rnd, plan.tenants)
                out = backend.run_phase(plan, settings.timeout)
                budget.spent += out.wall_seconds
                windows.append(
                    PhaseWindow(plan.phase, rnd, plan.tenants, out.started_ns, out.ended_ns)
                )
                seconds += out.wall_seconds
                for tenant, reader in out.readers.items():
                    if progress:
                        progress.samples(tenant, plan.phase, len(reader.samples))
                    if plan.phase == "solo":
                        solo_records[tenant] += reader.samples
                    else:
                        co = tuple(sorted(t for t in plan.tenants if t != tenant))
                        shared_records.setdefault((tenant, co), []).extend(reader.samples)
        facts = backend.facts()
    if progress:
        progress.finished()
    return MatrixResult(
        name=name,
        device=device,
        tenants=names,
        solo={t: PhaseSamples.from_records(t, "solo", r) for t, r in solo_records.items()},
        shared={
            key: PhaseSamples.from_records(key[0], "shared", r) for key, r in shared_records.items()
        },
        windows=windows,
        machine=dict(machine or {}),
        backend=facts,
        gpu_seconds=seconds,
        started_at=started_at,
        confidence=settings.confidence,
    )
