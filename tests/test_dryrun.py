"""The dry run (issue 21 item 2): ``kts run --cluster --dry-run`` and ``pytest --kts-cluster
--kts-dry-run`` print every object the first round would create, contact no cluster, exit 0."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("kubernetes")

from pytest_kts import dryrun
from pytest_kts.backends.base import PhaseOutput, PhasePlan, TenantSpec
from pytest_kts.cli import main
from pytest_kts.config import RunSettings
from pytest_kts.runner import run_scenario
from tests.test_runner import SimulatedBackend

TENANTS = ["--tenant", "fft:size=2048,sleep_ms=5", "--tenant", "matmul:size=4096,sleep_ms=20"]


class _Enough(Exception):
    pass


class Recording(SimulatedBackend):
    """The runner's plans as it sends them, until ``stop_after`` of them."""

    def __init__(self, stop_after: int) -> None:
        super().__init__(periods={"slow": 0.001, "other": 0.001})
        self.stop_after = stop_after

    def run_phase(self, plan: PhasePlan, timeout_s: float) -> PhaseOutput:
        if len(self.plans) == self.stop_after - 1:
            self.plans.append(plan)
            raise _Enough
        return super().run_phase(plan, timeout_s)


@pytest.mark.parametrize("slo", [None, {"slow": 1.3}])
def test_the_dry_run_plans_the_runners_first_round(slo: dict[str, float] | None) -> None:
    """If the runner plans its first round otherwise, this fails: update dryrun.first_round."""
    settings = RunSettings(device="cpu", iterations=600, round_iterations=200, max_seconds=300.0)
    names = ["slow", "other"]
    planned = dryrun.first_round(names, settings, slo)
    backend = Recording(stop_after=len(planned))
    tenants = [TenantSpec(n, "fft", 16) for n in names]
    with pytest.raises(_Enough):
        run_scenario("s", tenants, settings, slo, device="cpu", backend=backend)
    sent = backend.plans
    assert [(x.phase, x.round, dict(x.iterations)) for x in sent] == [
        (x.phase, x.round, dict(x.iterations)) for x in planned
    ]
    assert sent[0].max_seconds == pytest.approx(planned[0].max_seconds)
    if slo:  # calibration: the SLO tenant solo, then everyone with the other as background
        assert [x.phase for x in planned] == ["solo", "shared"]
        assert dict(planned[1].iterations) == {"slow": 100, "other": 0}
    else:
        assert [x.phase for x in planned] == ["solo", "solo", "shared"]


def _kts(*args: str) -> tuple[int, str]:
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("device-plugin", []),
        ("dra", ["--dra-sharing", "mps", "--dra-mps-threads", "50"]),
        ("hami", ["--hami-cores", "30", "--hami-memory", "3000"]),
        ("kai", ["--kai-fraction", "0.5"]),
    ],
)
def test_kts_run_dry_run_prints_every_object_and_contacts_no_cluster(
    mode: str, extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fake_cluster import FakeCluster

    with FakeCluster(dra=True) as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path)))
        code, out = _kts(
            "run", "--cluster", "--dry-run", "--gpu-request", mode, *extra, *TENANTS,
            "--slo", "fft=1.3",
        )  # fmt: skip
        assert cluster.seen == []  # not one request
    assert code == 0
    assert out.startswith("# pytest-kts dry run:")
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = [d["kind"] for d in docs]
    jobs = [d for d in docs if d["kind"] == "Job"]
    # Calibration: fft solo, then fft measured with matmul in the background.
    assert [j["metadata"]["labels"]["kts.phase"] for j in jobs] == ["solo", "shared", "shared"]
    pods = [j["spec"]["template"]["spec"] for j in jobs]
    if mode == "dra":
        assert kinds == ["ResourceClaim", "Job", "ResourceClaim", "Job", "Job"]
        shared_claim = docs[2]["metadata"]["name"]
        assert [p["resourceClaims"][0]["resourceClaimName"] for p in pods[1:]] == [shared_claim] * 2
        config = docs[2]["spec"]["devices"]["config"][0]["opaque"]["parameters"]
        assert config["sharing"] == {
            "strategy": "MPS", "mpsConfig": {"defaultActiveThreadPercentage": 50},
        }  # fmt: skip
    else:
        assert kinds == ["Job"] * 3
    limits = pods[0]["containers"][0]["resources"].get("limits", {})
    if mode == "hami":
        assert (limits["nvidia.com/gpucores"], limits["nvidia.com/gpumem"]) == ("30", "3000")
    if mode == "kai":
        assert {p["schedulerName"] for p in pods} == {"kai-scheduler"}


def test_a_dry_run_without_cluster_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--dry-run", *TENANTS]) == 2
    assert "add --cluster" in capsys.readouterr().err


def test_a_dry_run_refuses_an_option_of_another_mode(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--cluster", "--dry-run", "--gpu-request", "dra", "--hami-cores", "30",
                 *TENANTS])  # fmt: skip
    assert code == 2
    assert "--kts-hami-cores is for --kts-gpu-request hami" in capsys.readouterr().err


def test_the_environment_twins_reach_kts_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTS_GPU_REQUEST", "kai")
    monkeypatch.setenv("KTS_KAI_QUEUE", "team-a")
    code, out = _kts("run", "--cluster", "--dry-run", *TENANTS)
    assert code == 0
    job = next(d for d in yaml.safe_load_all(out) if d)
    assert job["spec"]["template"]["metadata"]["labels"]["kai.scheduler/queue"] == "team-a"


def test_the_plugins_dry_run_skips_each_test_and_prints_its_manifests(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        from pytest_kts import assert_df

        def test_one(kts):
            fft = kts.tenant("fft", size=256, sleep_ms=5)
            kts.tenant("matmul", size=512, sleep_ms=10)
            kts.run(slo={fft: 1.3})
            assert assert_df(fft) < 1.3  # never reached: the run was printed, not run
        """
    )
    result = pytester.runpytest_subprocess(
        "--kts-cluster", "--kts-dry-run", "--kts-gpu-request", "hami", "--kts-hami-cores", "30",
        "--kts-kubeconfig", f"/nonexistent/{uuid.uuid4().hex}", "--kts-report", "out", "-rs",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*dry run: manifests are printed*", "*kts: dry run (nothing was sent to a cluster)*",
         "*SKIPPED*dry run: 3 manifest(s) rendered*"]
    )  # fmt: skip
    docs = [d for d in yaml.safe_load_all((pytester.path / "out" / "manifests.yaml").read_text())]
    jobs: list[dict[str, Any]] = [d for d in docs if d and d["kind"] == "Job"]
    assert len(jobs) == 3
    limits = jobs[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpucores"] == "30"


def test_the_plugins_dry_run_needs_the_cluster_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--kts-dry-run", "-p", "no:cacheprovider")
    assert result.ret == 4  # a usage error
    result.stderr.fnmatch_lines(["*--kts-dry-run*add --kts-cluster*"])


def test_kts_run_cluster_runs_the_scenario_as_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --dry-run the same command runs: real workers (on the CPU) in the fake's pods."""
    pytest.importorskip("torch")
    from pytest_kts.backends.kubernetes import settings as knobs
    from tests.fake_cluster import FakeCluster

    monkeypatch.setattr(knobs, "START_LEAD_DEFAULT_S", 8.0)  # a real worker imports torch
    with FakeCluster() as cluster:
        kubeconfig = str(cluster.write_kubeconfig(tmp_path))
        code, out = _kts(
            "run", "--cluster", "--kubeconfig", kubeconfig, "--device", "cpu",
            "--tenant", "fft:size=16,sleep_ms=1", "--tenant", "matmul:size=16,sleep_ms=1",
            "--iterations", "20", "--timeout", "120", "--report", str(tmp_path / "out"), "-q",
        )  # fmt: skip
        created = cluster.created_jobs()
        assert cluster.jobs() == []  # deleted at the end
    assert code == 0, out
    assert len(created) == 4  # fft solo, matmul solo, both shared
    summary = yaml.safe_load((tmp_path / "out" / "summary.json").read_text())
    assert summary["scenarios"][0]["backend"]["backend"] == "kubernetes"
