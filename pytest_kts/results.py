"""What a scenario produced: per tenant its samples, and the facts around them.

Statistics are computed on demand from the samples (pure functions), so a result loaded from
disk is judged exactly as a fresh one.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_kts import sharing_env
from pytest_kts.attribution import NO_DEVICE_CLOCK, Attribution, WaitSplit, attribute, split_wait
from pytest_kts.backends.base import TenantSpec
from pytest_kts.samples import TenantSamples
from pytest_kts.stats import Summary, summarize
from pytest_kts.verdict import DegradationFactor, degradation

if TYPE_CHECKING:
    from pytest_kts.telemetry import Telemetry


@dataclass(frozen=True)
class PhaseWindow:
    phase: str
    round: int
    tenants: tuple[str, ...]
    started_ns: int
    ended_ns: int

    @property
    def seconds(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9


@dataclass
class TenantResult:
    """One tenant's solo and shared figures. ``assert_df(result, p=99)`` takes this."""

    spec: TenantSpec
    samples: TenantSamples
    meta: dict[str, Any] = field(default_factory=dict)
    accounting: dict[str, Any] = field(default_factory=dict)
    confidence: float = 0.95
    on_inconclusive: str = "warn"
    # Set by an adaptive run: the DF at its last look, at the error rate that look was given.
    sequential: dict[tuple[float, str], DegradationFactor] = field(default_factory=dict)
    # The other tenants of the scenario, set by ScenarioResult: attribution needs their stamps.
    cotenants: dict[str, TenantSamples] = field(default_factory=dict, repr=False, compare=False)
    # The table, the report files and the plots ask for the same figures; bootstrap them once.
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def summary(self, phase: str, clock: str = "host") -> Summary | None:
        key = ("summary", phase, clock)
        if key not in self._cache:
            data = self.samples.phase(phase)
            self._cache[key] = (
                summarize(
                    data.latency(clock), segments=data.segments(), busy_seconds=data.busy_seconds()
                )
                if data.has_clock(clock)
                else None
            )
        summary: Summary | None = self._cache[key]
        return summary

    @property
    def solo(self) -> Summary | None:
        return self.summary("solo")

    @property
    def shared(self) -> Summary | None:
        return self.summary("shared")

    def clocks(self) -> tuple[str, ...]:
        return tuple(
            c
            for c in ("host", "device")
            if self.samples.solo.has_clock(c) and self.samples.shared.has_clock(c)
        )

    def df(
        self, p: float = 99, clock: str = "host", confidence: float | None = None
    ) -> DegradationFactor | None:
        """The DF at ``p`` on ``clock``, carrying this result's inconclusive policy.

        A frozen value: every read returns the same figures, and nothing here changes them.
        Its explanation adds the wait/execution split and the co-tenant attribution.
        """
        if clock not in self.clocks():
            return None
        context = functools.partial(self.explanation, p)
        adaptive = self.sequential.get((float(p), clock))
        if adaptive is not None and confidence is None:
            # Re-judging an adaptive run at the full error rate would undo the alpha spending.
            return dataclasses.replace(
                adaptive, on_inconclusive=self.on_inconclusive, context=context
            )
        key = ("df", float(p), clock, confidence or self.confidence)
        if key in self._cache:
            cached: DegradationFactor = self._cache[key]
            return cached
        solo, shared = self.samples.solo, self.samples.shared
        result = degradation(
            solo.latency(clock),
            shared.latency(clock),
            p=p,
            confidence=confidence or self.confidence,
            clock=clock,
            solo_segments=solo.segments(),
            shared_segments=shared.segments(),
            on_inconclusive=self.on_inconclusive,
        )
        result = dataclasses.replace(result, context=context)
        self._cache[key] = result
        return result

    def attribution(self, p: float = 99, clock: str = "host") -> Attribution:
        """Which co-tenants were running during this tenant's slow shared iterations.

        ``result["fft"].attribution().shares()`` maps each co-tenant to the share of the tail
        its presence explains, so a test can assert no single neighbour causes most of it.
        """
        key = ("attribution", float(p), clock)
        if key not in self._cache:
            self._cache[key] = attribute(self.samples, self.cotenants, p=p, clock=clock)
        found: Attribution = self._cache[key]
        return found

    def wait_split(self, p: float = 99) -> WaitSplit | None:
        """Wait versus execution (``None`` without a device clock: see :meth:`split_reason`)."""
        key = ("wait_split", float(p))
        if key not in self._cache:
            try:
                self._cache[key] = split_wait(self.samples, p)
            except ValueError:
                self._cache[key] = None
        split: WaitSplit | None = self._cache[key]
        return split

    def split_reason(self) -> str | None:
        return NO_DEVICE_CLOCK if "device" not in self.clocks() else None

    def explanation(self, p: float = 99) -> list[str]:
        """Lines for a failed assertion: what the tail grew from and whom it overlapped."""
        lines = []
        split = self.wait_split(p)
        if split is not None:
            lines.append(
                f"{split.sentence()} (launch cost {split.launch_ms:.4g} ms subtracted: "
                f"{split.launch_source})"
            )
        elif self.split_reason():
            lines.append(f"wait vs execution: {self.split_reason()}")
        if self.cotenants:
            lines.append(self.attribution(p).sentence())
        return lines


@dataclass
class ScenarioResult:
    name: str
    device: str
    tenants: dict[str, TenantResult]
    windows: list[PhaseWindow] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)
    telemetry: Telemetry | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    gpu_seconds: float = 0.0
    stop_reason: str = ""
    confidence: float = 0.95
    started_at: str = ""
    warnings: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # against a baseline
    baseline_saved: str | None = None  # where --kts-save wrote this scenario's baseline

    def __post_init__(self) -> None:
        for name, tenant in self.tenants.items():
            tenant.cotenants = {n: t.samples for n, t in self.tenants.items() if n != name}

    def __getitem__(self, tenant: str) -> TenantResult:
        return self.tenants[tenant]

    @property
    def sharing_env(self) -> dict[str, Any]:
        """How the GPU was shared: time slice, compute and MIG mode, driver, MPS and HAMi
        settings (:mod:`pytest_kts.sharing_env`), from what each tenant's worker read where
        it ran; a local run fills what no worker could read from the runner's host."""
        local = self.backend.get("backend") != "kubernetes"
        return sharing_env.combine(
            {name: t.meta.get("sharing_env") for name, t in self.tenants.items()},
            host=self.machine.get("sharing_env") if local else None,
        )
