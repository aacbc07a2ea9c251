"""The test API: the ``kts`` fixture's object, tenant handles, and ``assert_df``.

A test declares tenants, optionally runs them with SLOs (then the runner stops as soon as the
evidence decides), and asserts on the degradation factor::

    def test_fft_keeps_its_tail(kts):
        fft = kts.tenant("fft", size=4096, sleep_ms=100)
        gemm = kts.tenant("matmul", size=4096, sleep_ms=150)
        kts.run(slo={fft: 1.3})
        assert assert_df(fft, p=99) < 1.3

Nothing runs behind the test's back: reading ``tenant.result`` (and so ``assert_df(tenant)``)
before ``kts.run()`` (or ``kts.run_modes()``) raises a :class:`ConfigError` that says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_kts.backends.base import TenantSpec
from pytest_kts.config import SHARING_MODES, RunSettings, check_iterations
from pytest_kts.constants import CLOCKS, PHASES
from pytest_kts.errors import ConfigError
from pytest_kts.matrix import MatrixResult
from pytest_kts.packing import PackingResult
from pytest_kts.results import ScenarioResult, TenantResult
from pytest_kts.thresholds import check_percentile, check_threshold
from pytest_kts.verdict import POLICIES, DegradationFactor
from pytest_kts.workers.harness import requested_timing
from pytest_kts.workers.process import cpu_threads
from pytest_kts.workers.workloads import check as check_workload

if TYPE_CHECKING:
    from pytest_kts.session import KtsSession


# Sizes that suit each device when a test gives none: the study's 4096 on a GPU; small enough
# on a CPU that several tenants share two cores in seconds.
DEFAULT_SIZE = {"cuda": 4096, "cpu": 128}


@dataclass
class Tenant:
    """A declared tenant; after the run, ``.result`` holds its figures."""

    spec: TenantSpec
    iterations: int | None = None
    _result: TenantResult | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def result(self) -> TenantResult:
        """The tenant's figures from the scenario's run; an error before the scenario ran."""
        if self._result is None:
            raise ConfigError(
                f"tenant {self.name!r} has not run: call kts.run() (or kts.run_modes()) "
                "before asserting on it"
            )
        return self._result

    def __hash__(self) -> int:
        return hash(self.spec.name)


class Kts:
    """What the ``kts`` fixture gives a test: declare tenants, run, read results."""

    def __init__(
        self,
        name: str,
        settings: RunSettings,
        device: str,
        runs: KtsSession,
        progress: Any = None,
        key: str | None = None,
    ) -> None:
        self.name = name
        self.key = key  # names the scenario's baseline (baseline.scenario_key)
        self.settings = settings
        self.device = device
        self._runs = runs
        self._progress = progress
        self._tenants: dict[str, Tenant] = {}
        self._result: ScenarioResult | None = None
        self.ran = False  # whether a scenario, matrix or packing ran (or was attempted)

    def tenant(
        self,
        name: str,
        workload: str | None = None,
        *,
        size: int | None = None,
        sleep_ms: float | None = None,
        iterations: int | None = None,
        warmup: int = 5,
        arrival: str = "closed",
        rate_hz: float | None = None,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        seed: int | None = None,
        priority: int = 0,
    ) -> Tenant:
        """Declare a tenant. ``workload`` defaults to ``name`` (``fft``, ``matmul``, ...)."""
        if self._result is not None:
            raise ConfigError("tenants must be declared before the scenario runs")
        if name in self._tenants:
            raise ConfigError(f"tenant {name!r} is declared twice")
        if iterations is not None:
            iterations = check_iterations(iterations, f"tenant {name!r}: iterations")
        try:
            spec = TenantSpec(
                name=name,
                workload=workload or name,
                # 0 is a size, and refused as one: only "not given" takes the default.
                size=DEFAULT_SIZE.get(self.device, 128) if size is None else size,
                sleep_ms=0.0 if sleep_ms is None else sleep_ms,
                warmup=warmup,
                arrival=arrival,
                rate_hz=rate_hz,
                seed=len(self._tenants) if seed is None else seed,
                priority=priority,
                params=dict(params or {}),
                env=dict(env or {}),
            )
            # Before anything spawns; a cluster's workers import from their image, not here.
            check_workload(spec.workload, spec.params, importable=not self.settings.cluster)
            cpu_threads({**os.environ, **spec.env})
            requested_timing({**os.environ, **spec.env})  # KTS_DEVICE_TIMING, named if bad
        except ValueError as exc:
            msg = str(exc)
            raise ConfigError(
                msg if msg.startswith("tenant") else f"tenant {name!r}: {msg}"
            ) from None
        handle = Tenant(spec, iterations)
        self._tenants[name] = handle
        return handle

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        return tuple(self._tenants.values())

    def run(
        self,
        slo: Mapping[Tenant | str, float] | None = None,
        p: float = 99,
        *,
        explain: bool = False,
    ) -> ScenarioResult:
        """Run the scenario once: adaptively until every SLO is decided, else the fixed protocol.

        ``explain=True`` also measures who takes each SLO tenant's tail by leaving every
        co-tenant out in turn (done by itself when an SLO check fails and its tenant has two
        or more co-tenants); ``tenant.result.attribution()`` then answers by experiment.
        """
        if self._result is not None:
            if slo:
                raise ConfigError("the scenario has already run; pass slo= to the first run()")
            return self._result
        if explain and not slo:
            raise ConfigError("explain=True needs slo=: it explains the SLO tenants' tails")
        self.ran = True
        result = self._runs.run(
            self.name, self._specs(), self._settings(), self._slo(slo, p), p, self._progress,
            key=self.key, explain=explain,
        )  # fmt: skip
        self._bind(result)
        return result

    def run_modes(
        self,
        modes: Sequence[str] = ("timeslice", "mps"),
        slo: Mapping[Tenant | str, float] | None = None,
        p: float = 99,
    ) -> dict[str, ScenarioResult]:
        """The same tenants once per sharing mode, side by side in the report.

        Tenant handles then hold the first mode's figures; assert on the others through
        ``results[mode][tenant_name]``.
        """
        if self._result is not None:
            raise ConfigError("the scenario has already run")
        unknown = [m for m in modes if m not in SHARING_MODES]
        if unknown or not modes:
            raise ConfigError(
                f"unknown sharing mode {unknown[0]!r}: use one of {', '.join(SHARING_MODES)}"
                if unknown
                else f"run_modes needs at least one sharing mode: {', '.join(SHARING_MODES)}"
            )
        self.ran = True
        results = self._runs.run_modes(
            self.name, self._specs(), self._settings(), modes, self._slo(slo, p), p,
            self._progress, key=self.key,
        )  # fmt: skip
        self._bind(results[modes[0]])
        return results

    def packing(
        self,
        cotenant: Tenant,
        up_to: int = 6,
        *,
        slo: Mapping[Tenant | str, float],
        p: float = 99,
    ) -> PackingResult:
        """How many copies of ``cotenant`` the other tenants' SLOs tolerate.

        Runs 1, 2, 3, ... up to ``up_to`` copies of ``cotenant`` next to every other declared
        tenant, each count an adaptive run within an equal share of ``--kts-max-seconds``,
        and stops at the first count at which an SLO is not decided pass:
        ``assert kts.packing(gemm, up_to=6, slo={fft: 1.3}).safe >= 3``.
        """
        if self._result is not None:
            raise ConfigError("the scenario has already run")
        if not isinstance(cotenant, Tenant) or cotenant.name not in self._tenants:
            raise ConfigError("packing takes a tenant this test declared with kts.tenant()")
        others = [t.spec for t in self.tenants if t.name != cotenant.name]
        if not others:
            raise ConfigError("packing needs at least one other tenant (the one with the SLO)")
        self.ran = True
        return self._runs.packing(
            self.name, others, cotenant.spec, self._settings(), self._slo(slo, p), p, up_to,
            self._progress, key=self.key,
        )  # fmt: skip

    def matrix(
        self, include_all: bool = True, rows: Sequence[Tenant | str] | None = None
    ) -> MatrixResult:
        """Each tenant's DF next to each co-tenant alone (and next to all of them).

        ``rows`` (tenants or names) limits the rows to those tenants: only they run solo, and
        only pairs holding one of them run, e.g. ``kts.matrix(rows=[router])`` for what each
        neighbour costs the router on its own.
        """
        names = None if rows is None else [r.name if isinstance(r, Tenant) else r for r in rows]
        self.ran = True
        return self._runs.run_matrix(
            self.name, self._specs(), self._settings(), include_all, self._progress, rows=names
        )

    def _specs(self) -> list[TenantSpec]:
        return [t.spec for t in self.tenants]

    def _slo(self, slo: Mapping[Tenant | str, float] | None, p: float) -> dict[str, float]:
        """The SLOs by tenant name, every threshold and ``p`` checked before anything runs."""
        check_percentile(p)
        out = {}
        for key, value in (slo or {}).items():
            name = key.name if isinstance(key, Tenant) else key
            if name not in self._tenants:
                raise ConfigError(f"SLO names tenant {name!r}, which the scenario does not declare")
            if isinstance(key, Tenant) and self._tenants[name] is not key:
                raise ConfigError(
                    f"SLO names a tenant {name!r} that another test declared: use this test's "
                    "handle (or the name)"
                )
            out[name] = check_threshold(value, f"SLO threshold for {name!r}")
        return out

    def _settings(self) -> RunSettings:
        per_tenant = [t.iterations for t in self.tenants if t.iterations]
        if per_tenant:
            return dataclasses.replace(self.settings, iterations=max(per_tenant))
        return self.settings

    def _bind(self, result: ScenarioResult) -> None:
        self._result = result
        for handle in self.tenants:
            handle._result = result.tenants[handle.name]

    @property
    def result(self) -> ScenarioResult | None:
        return self._result


def assert_df(
    tenant: Tenant | TenantResult,
    p: float = 99,
    clock: str = "host",
    *,
    on_inconclusive: str | None = None,
) -> DegradationFactor:
    """The degradation factor of ``tenant`` at percentile ``p``, ready to compare with a number.

    ``assert_df(fft, p=99) < 1.3`` holds when the whole confidence interval lies below 1.3 and
    fails when it lies above; an undecided comparison follows ``on_inconclusive`` when given,
    else ``--kts-inconclusive``. The returned value is frozen: the policy travels with it.
    """
    check_percentile(p)
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    result = tenant.result if isinstance(tenant, Tenant) else tenant
    df = result.df(p, clock)
    if df is None:
        empty = [phase for phase in PHASES if len(result.samples.phase(phase)) == 0]
        if empty:
            raise ConfigError(
                f"tenant {result.name!r} has no samples in its {' or '.join(empty)} phase: "
                "nothing was measured there (the kts table's stop reason says why: a phase cut "
                "by its time share needs a larger --kts-max-seconds, a session whose budget was "
                "spent before this test a larger --kts-budget-seconds)"
            )
        available = ", ".join(result.clocks()) or "none"
        why = "the device clock exists only on CUDA" if clock == "device" else "unmeasured"
        raise ConfigError(
            f"tenant {result.name!r} has no {clock} clock in both phases (available: {available}); "
            f"{why}"
        )
    if on_inconclusive is not None:
        if on_inconclusive not in POLICIES:
            raise ConfigError(
                f"on_inconclusive must be one of {', '.join(POLICIES)}, got {on_inconclusive!r}"
            )
        return df.with_policy(on_inconclusive)
    return df
