"""How many neighbours fit: copies of one co-tenant added until an SLO no longer holds.

``kts.packing(batch, up_to=6, slo={router: 1.3})`` runs the scenario with 1, 2, 3, ... copies of
``batch`` next to the other declared tenants, each count an adaptive run of its own (the same
runner, verdicts and interval), and stops at the first count at which an SLO is not decided
pass (failed, or undecided within its share of the budget). ``.safe`` is the largest count at
which every SLO still passed: on a cluster, the answer to the device plugin's ``replicas: N``
(``safe`` copies plus the SLO tenants share one GPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_kts.backends.base import TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.errors import ConfigError
from pytest_kts.results import CheckOutcome, ScenarioResult

__all__ = ["PackingResult", "PackingStep", "copies", "run_packing"]

# More copies than this is a typo (a GPU time-slices a handful of busy contexts usefully).
MAX_COPIES = 32


@dataclass(frozen=True)
class PackingStep:
    """One count: the scenario's result and whether every SLO passed."""

    count: int
    result: ScenarioResult

    @property
    def passed(self) -> bool:
        return bool(self.result.checks) and all(c.verdict == "pass" for c in self.result.checks)

    def worst(self) -> CheckOutcome | None:
        """The check that stopped the packing (the first not passed), or ``None``."""
        return next((c for c in self.result.checks if c.verdict != "pass"), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "passed": self.passed,
            "scenario": self.result.name,
            "seconds": self.result.gpu_seconds,
            "checks": [c.to_dict() for c in self.result.checks],
        }


@dataclass
class PackingResult:
    """Copies of ``cotenant`` next to the SLO tenants, count by count."""

    name: str
    cotenant: str
    up_to: int
    steps: list[PackingStep] = field(default_factory=list)
    stopped: str = ""  # why no larger count was measured

    @property
    def safe(self) -> int:
        """The largest count at which every SLO was decided pass (0: not even one copy)."""
        safe = 0
        for step in self.steps:
            if not step.passed:
                break
            safe = step.count
        return safe

    @property
    def seconds(self) -> float:
        return sum(s.result.gpu_seconds for s in self.steps)

    def sentence(self) -> str:
        """One line, e.g. "router keeps DF p99 < 1.3 with up to 3 copies of batch; 4 fail:
        1.52 [1.38, 1.67]"."""
        if not self.steps:
            return f"no count of {self.cotenant} was measured ({self.stopped or 'no budget'})"
        first = self.steps[0].result.checks
        slo = ", ".join(f"{c.tenant} keeps DF p{c.p:g} < {c.threshold:g}" for c in first)
        head = (
            f"{slo} with up to {self.safe} cop{'y' if self.safe == 1 else 'ies'} of {self.cotenant}"
        )
        failing = next((s for s in self.steps if not s.passed), None)
        if failing is None:
            more = f"; {self.stopped}" if self.stopped else ""
            return f"{head} (every count measured, up to {self.steps[-1].count}){more}"
        c = failing.worst()
        verdict = "fail" if c is not None and c.verdict == "fail" else "undecided"
        figure = "" if c is None or c.df is None else f": {c.df.value:.3g} {c.interval()}"
        return f"{head}; {failing.count} {verdict}{figure}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cotenant": self.cotenant,
            "up_to": self.up_to,
            "safe": self.safe,
            "seconds": self.seconds,
            "sentence": self.sentence(),
            "stopped": self.stopped,
            "steps": [s.to_dict() for s in self.steps],
        }


def copies(template: TenantSpec, count: int) -> list[TenantSpec]:
    """``count`` copies of ``template``: ``batch``, ``batch-2``, ... with seeds of their own."""
    return [
        dataclasses.replace(
            template,
            name=template.name if k == 0 else f"{template.name}-{k + 1}",
            seed=template.seed + 1000 * k,
        )
        for k in range(count)
    ]


def run_packing(
    name: str,
    others: Sequence[TenantSpec],
    template: TenantSpec,
    settings: RunSettings,
    slo: Mapping[str, float],
    p: float,
    up_to: int,
    run: Callable[[str, list[TenantSpec], RunSettings], ScenarioResult],
) -> PackingResult:
    """Counts 1..``up_to`` of ``template`` next to ``others``, each run by ``run`` (a session's
    scenario runner) within an equal share of what is left of ``--kts-max-seconds``; stops at
    the first count that does not pass every SLO."""
    if not slo:
        raise ConfigError("kts.packing needs slo=: the SLOs that must hold at every count")
    if isinstance(up_to, bool) or not isinstance(up_to, int) or not 1 <= up_to <= MAX_COPIES:
        raise ConfigError(f"up_to must be an integer from 1 to {MAX_COPIES}, got {up_to!r}")
    if template.name in slo:
        raise ConfigError(f"{template.name!r} is the co-tenant being packed: it has no SLO here")
    out = PackingResult(name=name, cotenant=template.name, up_to=up_to)
    left = settings.max_seconds
    for count in range(1, up_to + 1):
        share = left / (up_to - count + 1)
        counted = dataclasses.replace(settings, max_seconds=share)
        result = run(
            f"{name}[{count} x {template.name}]", [*others, *copies(template, count)], counted
        )
        out.steps.append(PackingStep(count, result))
        left -= result.gpu_seconds
        if not out.steps[-1].passed:
            break
        if left <= 0:
            out.stopped = f"the test's budget of {settings.max_seconds:.0f} s ran out"
            break
    return out
