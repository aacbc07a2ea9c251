"""The runner's logic against a backend that synthesises samples on a simulated clock.

The backend models what matters for phase sizing and budgets: each tenant has a period per
phase (seconds per iteration), a phase lasts until its measured tenants reach their targets
or its time share ends, background tenants produce samples for as long as the phase lasts,
and every phase costs a fixed overhead. No processes, no sleeping: fast and exact.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from pytest_kts.backends.base import Backend, PhaseOutput, PhasePlan, TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.errors import ConfigError
from pytest_kts.protocol import LineReader, Sample
from pytest_kts.runner import Budget, run_scenario

OVERHEAD_S = 0.1


class SimulatedBackend(Backend):
    """Lognormal latencies; in shared phases tenant ``slow``'s tail is scaled by ``tail_factor``."""

    name = "simulated"

    def __init__(
        self,
        tail_factor: float = 1.0,
        periods: dict[str, float] | None = None,
        shared_slowdown: float = 1.0,
        seed: int = 7,
    ) -> None:
        self.tail_factor = tail_factor
        self.periods = periods or {"slow": 0.01, "other": 0.01}
        self.shared_slowdown = shared_slowdown
        self.plans: list[PhasePlan] = []
        self.outputs: list[PhaseOutput] = []
        self.clock_ns = 1_000_000_000_000
        self.rng = np.random.default_rng(seed)
        self.started = self.closed = False

    def start(self, tenants: Sequence[TenantSpec], device: str) -> None:
        self.started = True

    def period(self, tenant: str, phase: str) -> float:
        slowdown = self.shared_slowdown if phase == "shared" else 1.0
        return self.periods[tenant] * slowdown

    def run_phase(self, plan: PhasePlan, timeout_s: float) -> PhaseOutput:
        self.plans.append(plan)
        sent = self.clock_ns
        start = sent + int(OVERHEAD_S * 1e9)
        needed = max(n * self.period(t, plan.phase) for t, n in plan.iterations.items() if n > 0)
        # The share counts from when the phase is sent, its start overhead included.
        duration = (
            needed if plan.max_seconds is None else min(needed, plan.max_seconds - OVERHEAD_S)
        )
        cut = duration < needed
        readers = {}
        for tenant, target in plan.iterations.items():
            period = self.period(tenant, plan.phase)
            n = int(duration / period + 1e-9)
            if not plan.until_stopped:
                n = min(n, target)
            lat = self.rng.lognormal(0.0, 0.25, size=n)
            if plan.phase == "shared" and tenant == "slow" and n:
                tail = lat > np.quantile(lat, 0.9)
                lat[tail] *= self.tail_factor
            reader = LineReader()
            for i, ms in enumerate(lat):
                t = start + int(i * period * 1e9)
                reader.samples.append(
                    Sample(tenant, plan.phase, plan.round, i, t, t + int(ms * 1e6), ms, math.nan)
                )
            readers[tenant] = reader
        end = start + int(duration * 1e9)
        self.clock_ns = end
        out = PhaseOutput(plan, readers, start, end, cut=cut, sent_ns=sent)
        self.outputs.append(out)
        return out

    def close(self) -> None:
        self.closed = True


TENANTS = [
    TenantSpec(name="slow", workload="fft", size=8),
    TenantSpec(name="other", workload="matmul", size=8),
]


def run(backend: Backend, settings: RunSettings, **kw: object):  # type: ignore[no-untyped-def]
    return run_scenario("t", TENANTS, settings, device="cpu", backend=backend, **kw)  # type: ignore[arg-type]


def wall(backend: SimulatedBackend) -> float:
    return sum(o.wall_seconds for o in backend.outputs)


def test_fixed_protocol_interleaves_rounds_and_reverses_order() -> None:
    backend = SimulatedBackend()
    result = run(backend, RunSettings(iterations=300, round_iterations=100))
    assert backend.started and backend.closed
    phases = [(p.phase, p.tenants) for p in backend.plans]
    round0 = [("solo", ("slow",)), ("solo", ("other",)), ("shared", ("slow", "other"))]
    assert phases[:3] == round0
    assert phases[3:6] == list(reversed(round0))  # drift falls on both sides
    assert len(backend.plans) == 9
    assert len(result.tenants["slow"].samples.solo) == 300
    assert result.stop_reason.startswith("fixed protocol")
    assert result.gpu_seconds == pytest.approx(wall(backend))


def test_a_clear_regression_fails_at_the_first_look_after_calibration() -> None:
    backend = SimulatedBackend(tail_factor=4.0)
    settings = RunSettings(max_seconds=1e6)
    result = run(backend, settings, slo={"slow": 1.3})
    check = result.checks[0]
    assert check.verdict == "fail"
    assert check.looks == 1
    # The look came no earlier than its own floor, and not much later: about 2.5 times the
    # 368 samples a p99 claim at 95% needs at the least (its own level is smaller, warmup
    # trimming takes some, and the plan allows for clustering up to a dispersion of 1.7).
    assert 368 <= check.df.evidence.measured <= 2.6 * 368
    # The look's rounds are short enough for a t with several degrees of freedom.
    assert result.tenants["slow"].sequential[(99.0, "host")].evidence.units >= 8
    assert result.stop_reason.startswith("every SLO decided")
    df = result.tenants["slow"].df(99)
    assert df is not None and df.verdict(1.3) == "fail" and df.alpha < 0.05


def test_phases_end_on_the_slo_tenants_counts_and_co_tenants_run_as_background() -> None:
    backend = SimulatedBackend(tail_factor=1.0, periods={"slow": 0.01, "other": 0.5})
    run(backend, RunSettings(max_seconds=1e6), slo={"slow": 1.3})
    shared = [p for p in backend.plans if p.phase == "shared"]
    assert shared and all(p.iterations["other"] == 0 for p in shared)  # background
    assert all(p.measured == ("slow",) for p in shared)
    # A co-tenant with a 50x longer period does not stretch the shared phase: it lasts what
    # the SLO tenant's target takes.
    for plan, out in zip(backend.plans, backend.outputs, strict=False):
        if plan.phase == "shared":
            assert out.seconds == pytest.approx(plan.iterations["slow"] * 0.01)
            assert not out.cut


def test_tenants_without_an_slo_get_one_short_solo_profile_only() -> None:
    backend = SimulatedBackend(tail_factor=1.0)
    result = run(backend, RunSettings(max_seconds=1e6), slo={"slow": 1.3})
    solo_other = [p for p in backend.plans if p.phase == "solo" and p.tenants == ("other",)]
    solo_slow = [p for p in backend.plans if p.phase == "solo" and p.tenants == ("slow",)]
    assert len(solo_other) == 1 and solo_other[0] is backend.plans[-1]  # at the end
    assert solo_other[0].iterations["other"] == 50
    assert len(solo_slow) >= 2  # calibration, then the looks
    assert "solo profile" in result.stop_reason


def test_solo_and_shared_samples_of_slo_tenants_stay_balanced() -> None:
    backend = SimulatedBackend(tail_factor=1.25, periods={"slow": 0.01, "other": 0.01})
    result = run(backend, RunSettings(max_seconds=1e6), slo={"slow": 1.3})
    samples = result.tenants["slow"].samples
    n_solo, n_shared = len(samples.solo), len(samples.shared)
    assert abs(n_solo - n_shared) <= 0.05 * max(n_solo, n_shared)


def test_a_slow_background_co_tenant_cannot_stretch_the_test_past_its_budget() -> None:
    # The SLO tenant is fast; the co-tenant takes a second per iteration. Fixed protocol
    # counted the co-tenant's iterations too; the adaptive one must not wait for them.
    backend = SimulatedBackend(periods={"slow": 0.005, "other": 1.0})
    result = run(backend, RunSettings(max_seconds=40.0), slo={"slow": 1.3})
    assert wall(backend) <= 40.0 + 1e-6
    assert result.gpu_seconds <= 40.0 + 1e-6


def test_the_budget_cuts_a_phase_short_and_keeps_its_samples() -> None:
    # The fixed protocol with a co-tenant too slow for the budget: its phases are cut.
    backend = SimulatedBackend(periods={"slow": 0.01, "other": 1.0})
    result = run(backend, RunSettings(iterations=400, round_iterations=200, max_seconds=30.0))
    assert wall(backend) <= 30.0 + 1e-6
    cut = [o for o in backend.outputs if o.cut]
    assert cut, "a phase of the slow co-tenant should have been cut"
    kept = sum(len(r.samples) for o in cut for r in o.readers.values())
    assert kept > 0
    assert len(result.tenants["other"].samples.solo) + len(
        result.tenants["other"].samples.shared
    ) == sum(len(o.readers["other"].samples) for o in backend.outputs if "other" in o.readers)
    assert "time share" in result.stop_reason


def test_the_look_plan_fits_the_budget_and_spends_all_of_it() -> None:
    # True DF at the threshold: never decided, so the run goes to its last look.
    backend = SimulatedBackend(tail_factor=1.3 ** (1 / 1.0), periods={"slow": 0.02, "other": 0.02})
    settings = RunSettings(max_seconds=60.0, max_iterations=100_000)
    result = run(backend, settings, slo={"slow": 1.3})
    assert wall(backend) <= 60.0 + 1e-6
    check = result.checks[0]
    assert check.verdict in ("inconclusive", "pass", "fail")
    # The whole error budget was spent by the last look, which came near the end of the time.
    spending = check.spending
    assert "spent 0.05," in spending
    assert wall(backend) > 0.7 * 60.0
    if check.verdict == "inconclusive":
        assert check.power and "samples per phase" in check.power
        assert not re.search(r"\babout 0 more", check.power)


def test_the_iteration_cap_ends_the_plan_and_is_named() -> None:
    backend = SimulatedBackend(tail_factor=1.3)
    result = run(backend, RunSettings(max_seconds=1e6, max_iterations=1000), slo={"slow": 1.3})
    assert max(len(result.tenants["slow"].samples.solo), 0) <= 1000 * 1.05
    if result.checks[0].verdict == "inconclusive":
        assert "1000 iterations" in result.stop_reason


def test_session_budget_is_shared_across_scenarios() -> None:
    budget = Budget(seconds=50.0)
    settings = RunSettings(max_iterations=100_000, max_seconds=1e6)
    first = SimulatedBackend(1.3, periods={"slow": 0.05, "other": 0.05})
    run(first, settings, slo={"slow": 1.3}, budget=budget)
    assert budget.spent <= 50.0 + 1e-6
    second = SimulatedBackend(1.3, periods={"slow": 0.05, "other": 0.05})
    result = run(second, settings, slo={"slow": 1.3}, budget=budget)
    assert budget.spent <= 50.0 + 1e-6
    assert "session's budget" in result.stop_reason


def test_bad_scenarios_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        run_scenario("t", TENANTS[:1], RunSettings(), device="cpu", backend=SimulatedBackend())
    with pytest.raises(ConfigError, match="does not declare"):
        run(SimulatedBackend(), RunSettings(), slo={"nobody": 1.3})
    with pytest.raises(ConfigError, match="for the local backend"):
        from pytest_kts.backends import make_backend

        make_backend(dataclasses.replace(RunSettings(), cluster=True, sharing="mps"))


def test_a_phase_plan_checks_its_targets() -> None:
    with pytest.raises(ValueError, match="positive target"):
        PhasePlan("shared", 0, {"a": 0, "b": 0})
    with pytest.raises(ValueError, match=">= 0"):
        PhasePlan("solo", 0, {"a": -1})
    with pytest.raises(ValueError, match="solo or shared"):
        PhasePlan("both", 0, {"a": 1})
    plan = PhasePlan("shared", 0, {"a": 10, "b": 0})
    assert plan.measured == ("a",) and plan.until_stopped
    assert not PhasePlan("solo", 0, {"a": 10}).until_stopped


class CulpritBackend(SimulatedBackend):
    """Three tenants: ``slow`` is 3x slower whenever ``hog`` shares the GPU, whatever else
    does; ``tiny`` changes nothing. Which co-tenants ran is read off each phase's plan."""

    def __init__(self) -> None:
        super().__init__(periods={"slow": 0.01, "hog": 0.01, "tiny": 0.05})

    def run_phase(self, plan: PhasePlan, timeout_s: float) -> PhaseOutput:
        out = super().run_phase(plan, timeout_s)
        if plan.phase == "shared" and "hog" in plan.tenants and "slow" in out.readers:
            reader = out.readers["slow"]
            reader.samples = [
                Sample(s.tenant, s.phase, s.round, s.iteration, s.start_ns,
                       s.start_ns + int(3 * s.host_ms * 1e6), 3 * s.host_ms, s.device_ms)
                for s in reader.samples
            ]  # fmt: skip
        return out


THREE = [
    TenantSpec(name="slow", workload="fft", size=8),
    TenantSpec(name="hog", workload="matmul", size=8),
    TenantSpec(name="tiny", workload="matmul", size=8),
]


def test_a_failed_check_is_explained_by_leaving_each_co_tenant_out() -> None:
    backend = CulpritBackend()
    settings = RunSettings(max_seconds=1e6)
    result = run_scenario("t", THREE, settings, {"slow": 1.3}, device="cpu", backend=backend)
    assert result.checks[0].verdict == "fail"
    # The experiment's phases: the full shared phase and each co-tenant left out, in rounds.
    subsets = {tuple(sorted(p.tenants)) for p in backend.plans if p.phase == "shared"}
    assert {("hog", "slow"), ("slow", "tiny"), ("hog", "slow", "tiny")} <= subsets
    attribution = result["slow"].attribution()
    assert attribution.method.startswith("leave-one-out")
    top = attribution.top()
    assert top is not None and top.cotenant == "hog"
    shares = attribution.shares()
    assert set(shares) == {"hog", "tiny"}
    assert all(math.isfinite(v) for v in shares.values())
    assert shares["hog"] > 0.8 and shares["tiny"] < 0.2
    # Two co-tenants: exact Shapley shares too, summing to the whole.
    effects = {e.cotenant: e for e in attribution.effects}
    assert effects["hog"].shapley is not None and effects["tiny"].shapley is not None
    assert effects["hog"].shapley + effects["tiny"].shapley == pytest.approx(1.0)
    assert "without hog the DF falls from" in attribution.sentence()
    # The scenario's own verdict is untouched by the experiment's phases.
    assert result["slow"].df(99).verdict(1.3) == "fail"
    assert len(result["slow"].samples.shared) < sum(
        len(ps) for ps in result["slow"].arms.values()
    ) + len(result["slow"].samples.shared)
    assert "leave-one-out" in result.stop_reason


def test_no_experiment_for_a_passing_check_unless_asked() -> None:
    backend = CulpritBackend()
    backend.run_phase = SimulatedBackend.run_phase.__get__(backend)  # nobody slows anybody
    result = run_scenario(
        "t", THREE, RunSettings(max_seconds=1e6), {"slow": 1.3}, device="cpu", backend=backend
    )
    assert result.checks[0].verdict == "pass"
    assert result["slow"].arms == {}
    assert result["slow"].attribution().method == "overlap"
    asked = run_scenario(
        "t", THREE, RunSettings(max_seconds=1e6), {"slow": 1.3}, device="cpu",
        backend=CulpritBackend(), explain=True,
    )  # fmt: skip
    assert asked["slow"].arms
    assert asked["slow"].attribution().method.startswith("leave-one-out")


def test_a_matrix_runs_on_the_scenario_runner_s_subset_phases() -> None:
    from pytest_kts.matrix import run_matrix

    backend = CulpritBackend()
    settings = RunSettings(iterations=800, round_iterations=400, max_seconds=1e6)
    m = run_matrix("t::m", THREE, settings, backend, device="cpu")
    assert backend.started and backend.closed
    # Solo phases, every pair and all three, in rounds whose order reverses (ABBA).
    round0 = [(p.phase, tuple(sorted(p.tenants))) for p in backend.plans[:7]]
    round1 = [(p.phase, tuple(sorted(p.tenants))) for p in backend.plans[7:]]
    assert round1 == round0[::-1]
    assert {t for ph, t in round0 if ph == "shared"} == {
        ("hog", "slow"), ("slow", "tiny"), ("hog", "tiny"), ("hog", "slow", "tiny")
    }  # fmt: skip
    # Each cell reads only the phases with exactly that co-tenant.
    assert m.df("slow", "hog").verdict(1.3) == "fail"  # type: ignore[union-attr]
    assert m.df("slow", "tiny").value == pytest.approx(1.0, rel=0.15)  # type: ignore[union-attr]
    assert m.df("slow", "all").value == pytest.approx(3.0, rel=0.2)  # type: ignore[union-attr]
    assert m.df("hog", "slow").value == pytest.approx(1.0, rel=0.2)  # type: ignore[union-attr]
    assert len(m.solo["slow"]) == 800 and len(m.shared[("slow", ("hog",))]) == 800
    assert len(m.windows) == len(backend.plans) == 14
    assert m.gpu_seconds == pytest.approx(wall(backend)) and m.cut_phases == 0


def test_a_matrix_with_rows_runs_only_the_pairs_that_hold_them() -> None:
    from pytest_kts.matrix import run_matrix
    from pytest_kts.transfer import matrix_from_dict, matrix_to_dict

    backend = CulpritBackend()
    settings = RunSettings(iterations=800, round_iterations=400, max_seconds=1e6)
    m = run_matrix("t::m", THREE, settings, backend, device="cpu", rows=["slow"])
    without_all = run_matrix(
        "t::m", THREE, settings, CulpritBackend(), device="cpu", rows=["slow"], include_all=False
    )
    assert without_all.columns() == ["slow", "hog", "tiny"]
    # One solo phase (the row's), its two pairs and all three, each round; no hog-tiny pair.
    round0 = [(p.phase, tuple(sorted(p.tenants))) for p in backend.plans[:4]]
    assert sorted(round0) == sorted([
        ("solo", ("slow",)), ("shared", ("hog", "slow")), ("shared", ("slow", "tiny")),
        ("shared", ("hog", "slow", "tiny")),
    ])  # fmt: skip
    assert len(backend.plans) == 8
    assert m.rows == ["slow"] and m.columns() == ["slow", "hog", "tiny", "all"]
    assert m.df("slow", "hog").verdict(1.3) == "fail"  # type: ignore[union-attr]
    assert m.df("slow", "tiny").value == pytest.approx(1.0, rel=0.15)  # type: ignore[union-attr]
    assert m.df("hog", "slow") is None  # no row, no solo phase: no DF
    assert len(m.values()) == 1 and m.table().count("\n") == 2  # header, rule, one row
    assert matrix_from_dict(matrix_to_dict(m)).rows == ["slow"]


def test_matrix_rows_must_name_declared_tenants() -> None:
    from pytest_kts.matrix import matrix_groups, matrix_rows

    with pytest.raises(ConfigError, match="'nope'"):
        matrix_rows(["a", "b"], ["nope"])
    with pytest.raises(ConfigError, match="empty"):
        matrix_rows(["a", "b"], [])
    assert matrix_rows(["a", "b", "c"], ["c", "a"]) == ["a", "c"]
    # Eight tenants: all rows run 8 solo + 28 pairs + all; one row 1 + 7 + 1.
    eight = [f"t{i}" for i in range(8)]
    assert 8 + len(matrix_groups(eight, eight, True)) == 37
    assert 1 + len(matrix_groups(eight, ["t0"], True)) == 9


def test_a_matrix_stays_inside_its_budget_and_keeps_what_it_measured() -> None:
    from pytest_kts.matrix import run_matrix

    backend = CulpritBackend()
    budget = Budget(seconds=20.0)
    settings = RunSettings(iterations=10_000, round_iterations=1000, max_seconds=1e6)
    m = run_matrix("t::m", THREE, settings, backend, device="cpu", budget=budget)
    assert wall(backend) <= 20.0
    assert budget.spent == pytest.approx(wall(backend))
    assert 0 < len(m.solo["slow"]) < 10_000 and m.cut_phases >= 1
    assert m.df("slow", "hog") is not None
