"""What a scenario produced: per tenant its samples, and the facts around them.

Statistics are computed on demand from the samples (pure functions), so a result loaded from
disk is judged exactly as a fresh one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_kts import sharing_env
from pytest_kts.attribution import NO_DEVICE_CLOCK, Attribution, WaitSplit, attribute, split_wait
from pytest_kts.backends.base import TenantSpec
from pytest_kts.causal import CausalAttribution
from pytest_kts.causal import measure as causal_measure
from pytest_kts.samples import PhaseSamples, TenantSamples
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
    # What the test asserted on this tenant's DFs, in order (filled by the comparisons).
    assertions: list[Assertion] = field(default_factory=list, repr=False, compare=False)
    # Experiments: this tenant's samples in shared phases with a subset of the tenants (the
    # tenants present, sorted -> samples), from the runner's leave-one-out rounds.
    arms: dict[tuple[str, ...], PhaseSamples] = field(default_factory=dict)
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
        record = functools.partial(self._record, p, clock)
        adaptive = self.sequential.get((float(p), clock))
        if adaptive is not None and confidence is None:
            # Re-judging an adaptive run at the full error rate would undo the alpha spending.
            return dataclasses.replace(
                adaptive,
                on_inconclusive=self.on_inconclusive,
                context=context,
                tenant=self.name,
                record=record,
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
        result = dataclasses.replace(result, context=context, tenant=self.name, record=record)
        self._cache[key] = result
        return result

    def _record(
        self, p: float, clock: str, op: str, threshold: float, verdict: str, held: bool
    ) -> None:
        self.assertions.append(
            Assertion(
                p=float(p), clock=clock, op=op, threshold=threshold, verdict=verdict, held=held
            )
        )

    def attribution(self, p: float = 99, clock: str = "host") -> Attribution | CausalAttribution:
        """Who took this tenant's tail: by experiment when the run left co-tenants out
        (``method`` names it: leave-one-out), else by overlap (which co-tenants were running
        during the slow shared iterations, with the limits overlap has).

        ``result["fft"].attribution().shares()`` maps each co-tenant to the share of the tail
        it caused (never NaN), so a test can assert no single neighbour causes most of it.
        """
        key = ("attribution", float(p), clock)
        if key not in self._cache:
            causal = causal_measure(
                self.name,
                self.samples.solo,
                self.arms,
                p=p,
                clock=clock,
                confidence=self.confidence,
            )
            self._cache[key] = (
                causal
                if causal is not None
                else attribute(self.samples, self.cotenants, p=p, clock=clock)
            )
        found: Attribution | CausalAttribution = self._cache[key]
        return found

    def overlap(self, p: float = 99, clock: str = "host") -> Attribution:
        """The overlap attribution alone (correlation), whether or not an experiment ran."""
        key = ("overlap", float(p), clock)
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
        """Why the tail grew, for a failed assertion's second line: wait versus execution, and
        who took it by which method (by experiment when the run measured it)."""
        parts = []
        split = self.wait_split(p)
        if split is not None:
            parts.append(split.sentence())
        elif self.split_reason():
            parts.append("no device clock, so no wait/execution split")
        if self.cotenants:
            parts.append(self.attribution(p).sentence())
        return ["; ".join(parts)] if parts else []


@dataclass(frozen=True)
class Assertion:
    """One comparison a test made on a DF: what it asserted and whether it held."""

    p: float
    clock: str
    op: str
    threshold: float
    verdict: str  # the verdict against the threshold: pass | fail | inconclusive
    held: bool

    @property
    def undecided(self) -> bool:
        """Held only because an undecided comparison holds under the ``warn`` policy."""
        return self.held and self.verdict == "inconclusive"

    @property
    def claim(self) -> str:
        return f"asserted DF {self.op} {self.threshold:g}"

    def text(self) -> str:
        if self.undecided:
            outcome = "held, but undecided (passed by --kts-inconclusive=warn)"
        else:
            outcome = "held" if self.held else "FAILED"
        return f"{self.claim}: {outcome}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CheckOutcome:
    """One SLO check of a run (``slo={fft: 1.3}``): its DF at the look that ended it, and how
    it got there. The one record the terminal, ``results.md``, ``summary.json``,
    ``benchmark.json`` and the plots read for a check."""

    tenant: str
    p: float
    clock: str
    threshold: float
    df: DegradationFactor | None = None  # None: no look happened (no samples, no time)
    looks: int = 0
    rounds: int = 0  # rounds the run had measured when this check was last judged
    final: bool = False  # the last look spent what was left of the error budget
    power: str | None = None  # what deciding would take, for an undecided check
    spending: str = ""  # the sequential plan's spending, for the details

    @property
    def verdict(self) -> str:
        return "inconclusive" if self.df is None else self.df.verdict(self.threshold)

    @property
    def value(self) -> float | None:
        return None if self.df is None else self.df.value

    @property
    def ci(self) -> tuple[float, float] | None:
        return None if self.df is None else self.df.ci

    @property
    def reason(self) -> str | None:
        return None if self.df is None else self.df.reason

    def interval(self, digits: int = 2, *, significant: bool = False) -> str:
        if self.df is None:
            return "(no estimate)"
        return self.df.interval(digits, significant=significant)

    def to_dict(self) -> dict[str, Any]:
        ev = None if self.df is None else self.df.evidence
        return {
            "tenant": self.tenant,
            "p": self.p,
            "clock": self.clock,
            "threshold": self.threshold,
            "verdict": self.verdict,
            "value": _finite(self.value),
            "ci": None if self.ci is None else [_finite(self.ci[0]), _finite(self.ci[1])],
            "interval": self.interval(3),
            "confidence": None if ev is None else ev.confidence,
            "confidence_label": None if ev is None else ev.label(),
            "look_level": None if ev is None else 1.0 - ev.level,
            "looks": self.looks,
            "rounds": self.rounds,
            "final": self.final,
            "n_solo": None if ev is None else ev.solo.kept,
            "n_shared": None if ev is None else ev.shared.kept,
            "measured_solo": None if ev is None else ev.solo.measured,
            "measured_shared": None if ev is None else ev.shared.measured,
            "reason": self.reason,
            "power": self.power if self.verdict == "inconclusive" else None,
            "spending": self.spending,
            "evidence": None if ev is None else ev.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], on_inconclusive: str = "warn") -> CheckOutcome:
        from pytest_kts.evidence import Evidence

        ev = data.get("evidence")
        df = None
        if ev is not None:
            df = DegradationFactor(
                evidence=Evidence.from_dict(ev), on_inconclusive=on_inconclusive,
                tenant=data["tenant"],
            )  # fmt: skip
        return cls(
            tenant=data["tenant"],
            p=float(data["p"]),
            clock=data["clock"],
            threshold=float(data["threshold"]),
            df=df,
            looks=int(data.get("looks", 0)),
            rounds=int(data.get("rounds", 0)),
            final=bool(data.get("final", False)),
            power=data.get("power"),
            spending=data.get("spending", ""),
        )


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class ScenarioResult:
    name: str
    device: str
    tenants: dict[str, TenantResult]
    windows: list[PhaseWindow] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)
    telemetry: Telemetry | None = None
    checks: list[CheckOutcome] = field(default_factory=list)
    # Tenants without an SLO in an adaptive run: background in every shared phase, with one
    # short solo profile each; the report shows them as context, not as verdicts.
    background: tuple[str, ...] = ()
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
