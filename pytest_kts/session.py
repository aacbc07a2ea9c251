"""Run-wide state: settings, device, the session's time budget, and every scenario's result."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_kts import machine
from pytest_kts.backends.base import TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.results import ScenarioResult
from pytest_kts.runner import Budget, ProgressSink, run_scenario


@dataclass
class KtsSession:
    settings: RunSettings
    device: str
    budget: Budget = field(default_factory=Budget)
    results: list[ScenarioResult] = field(default_factory=list)
    report_paths: list[Path] = field(default_factory=list)
    report_error: str | None = None

    @classmethod
    def create(cls, settings: RunSettings) -> KtsSession:
        device = "cuda" if settings.cluster and settings.device == "auto" else settings.device
        if not settings.cluster:
            device = machine.resolve_device(settings.device)
        return cls(settings, device, Budget(settings.budget_seconds))

    def run(
        self,
        name: str,
        tenants: Sequence[TenantSpec],
        settings: RunSettings,
        slo: Mapping[str, float] | None,
        p: float,
        progress: ProgressSink | None = None,
    ) -> ScenarioResult:
        telemetry_factory = None
        if self.device == "cuda" and not settings.cluster:
            telemetry_factory = _telemetry_factory()
        result = run_scenario(
            name,
            tenants,
            settings,
            slo,
            p,
            progress,
            device=self.device,
            budget=self.budget,
            telemetry_factory=telemetry_factory,
            machine=machine.facts(self.device),
        )
        if result.telemetry is not None:
            result.warnings += result.telemetry.clock_warnings(result.windows)
        self.results.append(result)
        return result

    def write_report(self, directory: Path) -> None:
        from pytest_kts.report import write_report

        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        try:
            self.report_paths = write_report(self.results, directory, command=command)
        except Exception as exc:  # the report must never take the test run's outcome with it
            self.report_error = f"could not write the report to {directory}: {exc}"

    def facts(self) -> dict[str, Any]:
        return machine.facts(self.device)


def _telemetry_factory() -> Any:
    try:
        from pytest_kts.telemetry import TelemetrySampler
    except ImportError:
        return None
    if TelemetrySampler.unavailable_reason() is not None:
        return None
    return lambda: TelemetrySampler(device_index=0, interval_s=0.05)
