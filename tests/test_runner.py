"""The runner's logic against a backend that synthesises samples (no processes, fast)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from pytest_kts.backends.base import Backend, PhaseOutput, PhasePlan, TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.errors import ConfigError
from pytest_kts.protocol import LineReader, Sample
from pytest_kts.runner import Budget, run_scenario


class SyntheticBackend(Backend):
    """Latencies lognormal around 1 ms; in shared phases tenant ``slow`` has its tail scaled."""

    name = "synthetic"

    def __init__(self, tail_factor: float = 1.0, seconds_per_phase: float = 1.0) -> None:
        self.tail_factor = tail_factor
        self.seconds_per_phase = seconds_per_phase
        self.plans: list[PhasePlan] = []
        self.clock_ns = 1_000_000_000
        self.rng = np.random.default_rng(7)
        self.started = self.closed = False

    def start(self, tenants: Sequence[TenantSpec], device: str) -> None:
        self.started = True

    def run_phase(self, plan: PhasePlan, timeout_s: float) -> PhaseOutput:
        self.plans.append(plan)
        start = self.clock_ns
        readers = {}
        for tenant, n in plan.iterations.items():
            lat = self.rng.lognormal(0.0, 0.25, size=n)
            if plan.phase == "shared" and tenant == "slow":
                tail = lat > np.quantile(lat, 0.9)
                lat[tail] *= self.tail_factor
            reader = LineReader()
            t = start
            for i, ms in enumerate(lat):
                s = Sample(
                    tenant, plan.phase, plan.round, i, t, t + int(ms * 1e6), ms, float("nan")
                )
                reader.samples.append(s)
                t += int(self.seconds_per_phase * 1e9 / n)
            readers[tenant] = reader
        self.clock_ns += int(self.seconds_per_phase * 1e9)
        return PhaseOutput(plan, readers, start, self.clock_ns)

    def close(self) -> None:
        self.closed = True


TENANTS = [
    TenantSpec(name="slow", workload="fft", size=8),
    TenantSpec(name="other", workload="matmul", size=8),
]


def run(backend: Backend, settings: RunSettings, **kw: object):  # type: ignore[no-untyped-def]
    return run_scenario("t", TENANTS, settings, device="cpu", backend=backend, **kw)  # type: ignore[arg-type]


def test_fixed_protocol_interleaves_rounds_and_reverses_order() -> None:
    backend = SyntheticBackend()
    result = run(backend, RunSettings(iterations=300, round_iterations=100))
    assert backend.started and backend.closed
    phases = [(p.phase, p.tenants) for p in backend.plans]
    round0 = [("solo", ("slow",)), ("solo", ("other",)), ("shared", ("slow", "other"))]
    assert phases[:3] == round0
    assert phases[3:6] == list(reversed(round0))  # drift falls on both sides
    assert len(backend.plans) == 9
    assert len(result.tenants["slow"].samples.solo) == 300
    assert result.stop_reason.startswith("fixed protocol")
    assert result.gpu_seconds == pytest.approx(9.0)


def test_adaptive_run_stops_once_every_slo_is_decided() -> None:
    backend = SyntheticBackend(tail_factor=4.0)
    settings = RunSettings(round_iterations=200, max_iterations=4000, max_seconds=1e6)
    result = run(backend, settings, slo={"slow": 1.3, "other": 1.3})
    verdicts = {c["tenant"]: c["verdict"] for c in result.checks}
    assert verdicts == {"slow": "fail", "other": "pass"}
    rounds = len(backend.plans) // 3
    assert rounds < 4000 // 200  # decided before the budget
    assert result.stop_reason.startswith("every SLO decided")
    # The test's assertion sees the DF of the last look, at that look's error rate.
    df = result.tenants["slow"].df(99)
    assert df is not None and df.verdict(1.3) == "fail" and df.alpha < 0.05


def test_adaptive_rounds_give_solo_time_only_to_tenants_with_an_slo() -> None:
    backend = SyntheticBackend(tail_factor=4.0)
    settings = RunSettings(round_iterations=200, max_iterations=4000, max_seconds=1e6)
    run(backend, settings, slo={"slow": 1.3})
    solo_other = [p for p in backend.plans if p.phase == "solo" and p.tenants == ("other",)]
    solo_slow = [p for p in backend.plans if p.phase == "solo" and p.tenants == ("slow",)]
    assert [p.round for p in solo_other] == [0]
    assert len(solo_slow) > 1


def test_budget_in_seconds_stops_before_a_round_that_would_overrun() -> None:
    backend = SyntheticBackend(tail_factor=1.3, seconds_per_phase=10.0)  # true DF ~ threshold
    settings = RunSettings(round_iterations=100, max_iterations=100_000, max_seconds=95.0)
    result = run(backend, settings, slo={"slow": 1.3})
    assert result.gpu_seconds <= 95.0
    assert "budget" in result.stop_reason and "undecided" in result.stop_reason
    assert result.checks[0]["verdict"] == "inconclusive"


def test_session_budget_is_shared_across_scenarios() -> None:
    budget = Budget(seconds=50.0)
    settings = RunSettings(round_iterations=100, max_iterations=100_000, max_seconds=1e6)
    run(SyntheticBackend(1.3, 10.0), settings, slo={"slow": 1.3}, budget=budget)
    assert budget.spent <= 50.0
    second = run(SyntheticBackend(1.3, 10.0), settings, slo={"slow": 1.3}, budget=budget)
    assert "session's budget" in second.stop_reason


def test_bad_scenarios_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        run_scenario("t", TENANTS[:1], RunSettings(), device="cpu", backend=SyntheticBackend())
    with pytest.raises(ConfigError, match="does not declare"):
        run(SyntheticBackend(), RunSettings(), slo={"nobody": 1.3})
    with pytest.raises(ConfigError, match="for the local backend"):
        from pytest_kts.runner import make_backend

        make_backend(dataclasses.replace(RunSettings(), cluster=True, sharing="mps"))
