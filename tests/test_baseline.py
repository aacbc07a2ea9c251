from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pytest_kts.backends.base import TenantSpec
from pytest_kts.baseline import (
    Baseline,
    baseline_path,
    compare,
    github_benchmark_json,
    load_baseline,
    machine_mismatches,
    safe_id,
    save_baseline,
)
from pytest_kts.errors import ConfigError
from pytest_kts.protocol import Sample
from pytest_kts.results import ScenarioResult, TenantResult
from pytest_kts.samples import PhaseSamples, TenantSamples, group

SCENARIO = "tests/test_gpu.py::test_fft_next_to_gemm[4096]"
MACHINE = {
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "driver": "580.65",
    "cuda": "12.8",
    "torch": "2.11.0",
    "device": "cuda",
    "host": "gpu-01",
}


def make_result(
    seed: int, *, shared_scale: float = 1.0, device_only: bool = False, n: int = 400
) -> ScenarioResult:
    """fft and gemm, two rounds of ``n`` per phase; shared latencies scaled by ``shared_scale``."""
    rng = np.random.default_rng(seed)
    records = []
    t = 1_700_000_000_000_000_000
    for rnd in range(2):
        for phase in ("solo", "shared"):
            for name, base in (("fft", 1.2), ("gemm", 4.1)):
                scale = base * (shared_scale if phase == "shared" else 1.0)
                lat = scale * rng.lognormal(0, 0.25, n)
                for i, ms in enumerate(lat):
                    start = t + i * 10_000_000
                    host = math.nan if device_only else float(ms)
                    device = float(ms) * 0.8
                    records.append(
                        Sample(name, phase, rnd, i, start, start + int(ms * 1e6), host, device)
                    )
            t += n * 10_000_000 + 1_000_000_000
    grouped = group(records)
    tenants = {
        name: TenantResult(spec=TenantSpec(name, name, 4096, sleep_ms=100), samples=grouped[name])
        for name in grouped
    }
    return ScenarioResult(
        name=SCENARIO,
        device="cuda",
        tenants=tenants,
        machine=dict(MACHINE),
        started_at="2026-01-01T00:00:00+00:00",
    )


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    result = make_result(1)
    folder = save_baseline(result, tmp_path, "main")
    assert (
        folder == tmp_path / "main" / safe_id(SCENARIO) == baseline_path(tmp_path, "main", SCENARIO)
    )
    assert sorted(p.name for p in folder.iterdir()) == ["machine.json", "samples.csv"]
    loaded = load_baseline(tmp_path, "main", SCENARIO)
    assert isinstance(loaded, Baseline)
    samples, machine, shared_how = loaded  # samples, machine, sharing environment
    assert machine == MACHINE
    assert shared_how == result.sharing_env  # saved with the samples
    assert set(samples) == {"fft", "gemm"}
    for name in ("fft", "gemm"):
        for phase in ("solo", "shared"):
            a, b = samples[name].phase(phase), result.tenants[name].samples.phase(phase)
            assert np.allclose(a.host_ms, b.host_ms, atol=1e-6)
            assert np.array_equal(a.start_ns, b.start_ns) and np.array_equal(a.round, b.round)
    facts = json.loads((folder / "machine.json").read_text())
    assert facts["scenario"] == SCENARIO and facts["tenants"]["fft"]["sleep_ms"] == 100


def test_missing_baseline_is_none(tmp_path: Path) -> None:
    assert load_baseline(tmp_path, "main", SCENARIO) is None
    save_baseline(make_result(1), tmp_path, "main")
    assert load_baseline(tmp_path, "main", "another scenario") is None
    assert load_baseline(tmp_path, "other", SCENARIO) is None


def test_corrupt_baseline_is_an_error(tmp_path: Path) -> None:
    folder = save_baseline(make_result(1), tmp_path, "main")
    (folder / "samples.csv").write_text("not,a,samples,file\n1,2,3,4\n")
    with pytest.raises(ConfigError, match="unreadable"):
        load_baseline(tmp_path, "main", SCENARIO)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("samples_gone", "samples.csv is missing"),
        ("samples_a_folder", "samples.csv is missing"),
        ("header_only", "no shared-phase samples"),
    ],
)
def test_a_saved_baseline_without_its_samples_is_an_error_not_a_new_test(
    tmp_path: Path, damage: str, says: str
) -> None:
    folder = save_baseline(make_result(1), tmp_path, "main")
    samples = folder / "samples.csv"
    if damage == "header_only":
        samples.write_text(samples.read_text().splitlines()[0] + "\n")
    else:
        samples.unlink()
        if damage == "samples_a_folder":
            samples.mkdir()
    with pytest.raises(ConfigError, match=f"unreadable baseline 'main'.*{says}"):
        load_baseline(tmp_path, "main", SCENARIO)


def test_a_tenant_that_cannot_be_compared_is_an_undecided_comparison_that_says_why() -> None:
    before = {n: t.samples for n, t in make_result(1).tenants.items()}
    # The baseline's gemm has no shared phase: its comparison is undecided, with the reason.
    before["gemm"] = TenantSamples(
        "gemm", before["gemm"].solo, PhaseSamples.empty("gemm", "shared")
    )
    found = {c.tenant: c for c in compare(make_result(2), before)}
    assert found["fft"].n_baseline > 0 and math.isfinite(found["fft"].ratio)
    assert found["gemm"].verdict == "inconclusive" and not found["gemm"].regressed
    assert found["gemm"].describe() == "gemm: not compared: no shared-phase samples on one side"


@pytest.mark.parametrize("name", ["../up", "a/b", "", ".hidden", "x" * 101, "nl\n"])
def test_baseline_names_are_checked(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="baseline name"):
        save_baseline(make_result(1, n=30), tmp_path, name)


def test_safe_id_is_a_plain_unique_directory_name() -> None:
    a = safe_id("tests/test_x.py::test_y[" + "a" * 100 + "]")
    b = safe_id("tests/test_x.py::test_y[" + "a" * 100 + "b]")
    assert a != b and "/" not in a and ":" not in a and len(a) <= 89
    assert safe_id("x y") == safe_id("x y") != safe_id("x_y")


def test_same_behaviour_is_not_a_regression(tmp_path: Path) -> None:
    save_baseline(make_result(1), tmp_path, "main")
    baseline = load_baseline(tmp_path, "main", SCENARIO)
    assert baseline is not None
    comparisons = compare(make_result(2), baseline)
    assert [c.tenant for c in comparisons] == ["fft", "gemm"]
    for c in comparisons:
        assert c.clock == "host" and c.p == 99 and c.threshold == 1.1
        assert not c.regressed and c.verdict in ("pass", "inconclusive")
        assert 0.8 < c.ratio < 1.25
        assert c.n_baseline > 600 and c.n_current > 600


def test_slower_shared_phase_is_a_detected_regression(tmp_path: Path) -> None:
    save_baseline(make_result(1), tmp_path, "main")
    baseline = load_baseline(tmp_path, "main", SCENARIO)
    assert baseline is not None
    comparisons = compare(make_result(2, shared_scale=1.6), baseline, threshold=1.1)
    for c in comparisons:
        assert c.regressed and c.verdict == "fail"
        assert 1.3 < c.ratio < 2.0 and c.ci[0] > 1.1
        assert c.current_ms > c.baseline_ms
        assert "regression beyond 1.1x" in c.describe()
    assert json.dumps([c.to_dict() for c in comparisons])


def test_faster_shared_phase_is_an_improvement() -> None:
    # 1600 samples a phase: a pass (an upper bound) assumes clustered exceedances until about
    # ten have shown otherwise, so 800 leave the p99's upper end open.
    baseline = make_result(1, shared_scale=1.6, n=800)
    now = make_result(2, n=800)
    comparisons = compare(now, {n: t.samples for n, t in baseline.tenants.items()})
    assert all(c.verdict == "pass" and c.improved for c in comparisons)
    assert "improved" in comparisons[0].describe()


def test_falls_back_to_the_device_clock_for_a_device_only_baseline() -> None:
    baseline = make_result(1, device_only=True)
    samples = {n: t.samples for n, t in baseline.tenants.items()}
    comparisons = compare(make_result(2, shared_scale=1.6), samples)
    assert {c.clock for c in comparisons} == {"device"}
    assert all(c.regressed for c in comparisons)


def test_tenants_missing_from_the_baseline_are_skipped() -> None:
    baseline = make_result(1)
    samples = {"fft": baseline.tenants["fft"].samples}
    assert [c.tenant for c in compare(make_result(2), samples)] == ["fft"]


def test_machine_mismatches_name_what_changed() -> None:
    now = dict(MACHINE, gpu_name="NVIDIA A100-SXM4-80GB", torch="2.12.0", host="gpu-02")
    problems = machine_mismatches(now, MACHINE)
    assert problems == [
        "GPU model differs: baseline 'NVIDIA H100 80GB HBM3', now 'NVIDIA A100-SXM4-80GB'",
        "torch differs: baseline '2.11.0', now '2.12.0'",
    ]
    assert machine_mismatches(MACHINE, MACHINE) == []
    assert machine_mismatches({"gpu_name": "X"}, {"driver": "1"}) == []  # unknown is not a change


def test_github_benchmark_json_schema() -> None:
    entries = github_benchmark_json([make_result(1, shared_scale=1.5, n=800)])
    # 2 tenants x 2 clocks x (shared p99, DF)
    assert len(entries) == 8
    assert len({e["name"] for e in entries}) == 8
    json.loads(json.dumps(entries, allow_nan=False))
    for e in entries:
        assert set(e) == {"name", "unit", "value", "range", "extra"}
        assert isinstance(e["name"], str) and e["name"].startswith(SCENARIO + "/")
        assert e["unit"] in ("ms", "x")
        assert isinstance(e["value"], float) and math.isfinite(e["value"]) and e["value"] > 0
        # Both ends of an asymmetric interval: "-0.21 / +0.35".
        down, up = (float(x) for x in e["range"].replace("+", "").split(" / "))
        assert down < 0 < up
        assert math.isclose(
            -down,
            e["value"] - float(e["extra"].split("[")[1].split(",")[0]),
            rel_tol=0.01,
            abs_tol=1e-3,
        )
        assert isinstance(e["extra"], str) and "n=" in e["extra"]
    by_name = {e["name"]: e for e in entries}
    df = by_name[f"{SCENARIO}/fft/DF p99 (host)"]
    assert df["unit"] == "x" and 1.2 < df["value"] < 1.9 and "95% CI [" in df["extra"]
    p99 = by_name[f"{SCENARIO}/fft/shared p99 (host)"]
    shared = make_result(1, shared_scale=1.5, n=800).tenants["fft"].summary("shared")
    assert shared is not None and p99["value"] == pytest.approx(shared.p99, abs=1e-6)
