"""The contention matrix: each tenant's DF next to each co-tenant, and next to all of them.

Every tenant runs solo; then every pair shares the GPU; then (with three or more) all of them
at once. Rounds repeat that with the order reversed every other round, as in a scenario. The
cell (row A, column B) is A's degradation factor while B was its only co-tenant.

With ``rows`` (``kts.matrix(rows=[router])``) only those tenants get rows: they run solo, and
only the pairs that hold one of them run, so "what does each neighbour cost my SLO tenant on
its own" takes one solo phase and one pair per co-tenant a round instead of every pair.

A matrix is one user of the scenario runner's subset phases (the phases leave-one-out
attribution runs): each group is an experiment whose samples are filed under its tenants, run
by the same code, with the same time shares, stop margins and budget accounting.
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
from pytest_kts.results import PhaseWindow
from pytest_kts.runner import Budget, _Scenario
from pytest_kts.samples import PhaseSamples, group
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
    cut_phases: int = 0  # phases ended by their time share before their targets
    rows: list[str] = field(default_factory=list)  # the tenants with a row; empty: all
    # Each cell's DF, computed once: the terminal, results.md, summary.json and the heatmap
    # all read the same cells (a bootstrap each).
    _dfs: dict[tuple[str, str, float, str], DegradationFactor | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = list(self.tenants)

    def co_tenants(self, tenant: str, column: str) -> tuple[str, ...]:
        if column == ALL:
            return tuple(sorted(t for t in self.tenants if t != tenant))
        return (column,)

    def df(
        self, tenant: str, column: str, p: float = 99, clock: str = "host"
    ) -> DegradationFactor | None:
        """``tenant``'s DF with ``column`` (a tenant, or ``"all"``) as its co-tenants."""
        key = (tenant, column, float(p), clock)
        if key not in self._dfs:
            self._dfs[key] = self._df(tenant, column, p, clock)
        return self._dfs[key]

    def _df(self, tenant: str, column: str, p: float, clock: str) -> DegradationFactor | None:
        shared = self.shared.get((tenant, self.co_tenants(tenant, column)))
        solo = self.solo.get(tenant)
        if (
            shared is None
            or solo is None
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
        if len(self.tenants) > 2 and any(len(co) == len(self.tenants) - 1 for _, co in self.shared):
            cols.append(ALL)  # only where all of them ran at once (include_all)
        return cols

    def cells(self, p: float = 99, clock: str = "host") -> list[list[DegradationFactor | None]]:
        """Each cell's DF, rows = :attr:`rows`, columns = :meth:`columns` (None on the
        diagonal and where a pair did not run)."""
        return [[self.df(row, col, p, clock) for col in self.columns()] for row in self.rows]

    def values(self, p: float = 99, clock: str = "host") -> list[list[float]]:
        """DF point estimates, as :meth:`cells` (nan where a cell has none)."""
        return [
            [math.nan if df is None else float(df.value) for df in row]
            for row in self.cells(p, clock)
        ]

    def table(self, p: float = 99, clock: str = "host", fmt: str = "simple") -> str:
        rows = []
        for row in self.rows:
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
    rows: Sequence[str] | None = None,
    machine: dict[str, Any] | None = None,
    budget: Budget | None = None,
    progress: Any = None,  # a runner.ProgressSink: the same status line as a scenario's
) -> MatrixResult:
    """Every tenant solo, every pair shared (and all together), in interleaved rounds.

    Each phase gets an equal share of the time left (``--kts-max-seconds`` for the test, the
    session's ``budget``); a phase whose share ends is cut and keeps its samples, and the
    rounds stop when no time is left, so a matrix stays inside its budget like a scenario.
    ``rows`` limits the rows (and so the solo phases and pairs) to those tenants.
    """
    if len(tenants) < 2:
        raise ConfigError("a contention matrix needs at least 2 tenants")
    names = [t.name for t in tenants]
    row_names = matrix_rows(names, rows)
    per_round = settings.round_iterations
    rounds = max(1, math.ceil(settings.iterations / per_round))
    groups = matrix_groups(names, row_names, include_all)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # The scenario runner's phases: solo phases are its own, each group a subset phase
    # (experiment) with its samples filed under the group, the same time shares and limits.
    run = _Scenario(names, settings, backend, budget or Budget(), progress)
    order: list[tuple[PhasePlan, tuple[str, ...] | None]] = []
    for rnd in range(rounds):
        plans: list[tuple[PhasePlan, tuple[str, ...] | None]] = [
            (PhasePlan("solo", rnd, {t: per_round}), None) for t in row_names
        ]
        plans += [(PhasePlan("shared", rnd, dict.fromkeys(g, per_round)), g) for g in groups]
        order += plans[::-1] if rnd % 2 else plans  # ABBA: drift cancels across rounds
    with backend:
        backend.start_timeout_s = settings.timeout
        backend.start(tenants, device)
        for i, (plan, arm) in enumerate(order):
            share = run.left() / (len(order) - i)  # an equal share of what is left
            timed = PhasePlan(plan.phase, plan.round, plan.iterations, max_seconds=share)
            if run.run(timed, arm) is None:
                break
        facts = backend.facts()
    if progress:
        progress.finished()
    solo = group(run.collected.records, names)
    shared: dict[tuple[str, tuple[str, ...]], PhaseSamples] = {}
    for t in row_names:
        for arm, samples in run.arm_samples(t).items():
            shared[(t, tuple(sorted(x for x in arm if x != t)))] = samples
    return MatrixResult(
        name=name,
        device=device,
        tenants=names,
        solo={t: solo[t].solo for t in row_names},
        shared=shared,
        windows=run.collected.windows,
        machine=dict(machine or {}),
        backend=facts,
        gpu_seconds=run.spent,
        started_at=started_at,
        confidence=settings.confidence,
        cut_phases=run.cut_phases,
        rows=row_names,
    )


def matrix_rows(names: Sequence[str], rows: Sequence[str] | None) -> list[str]:
    """The tenants that get a row (all without ``rows``), in declaration order."""
    if rows is None:
        return list(names)
    unknown = sorted(set(rows) - set(names))
    if unknown:
        raise ConfigError(
            f"matrix rows name tenant {unknown[0]!r}, which the scenario does not declare"
        )
    if not rows:
        raise ConfigError(
            "matrix rows= is empty: name at least one tenant, or leave it out for all"
        )
    return [t for t in names if t in rows]


def matrix_groups(
    names: Sequence[str], rows: Sequence[str], include_all: bool
) -> list[tuple[str, ...]]:
    """The shared phases of a round: each pair holding a row tenant, then (with three or more
    tenants and ``include_all``) all of them at once. A round adds one solo phase per row."""
    groups: list[tuple[str, ...]] = [
        pair for pair in itertools.combinations(names, 2) if any(t in rows for t in pair)
    ]
    if include_all and len(names) > 2:
        groups.append(tuple(names))
    return groups
