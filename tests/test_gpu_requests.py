"""``--kts-gpu-request {device-plugin,dra,hami,kai}`` (issue 21 items 1 and 5).

The pure part: what each mode puts in a pod, and the DRA claim. The end-to-end part: the real
runner and backend against the fake cluster, one run per mode, on a node with two GPUs that
the fake hands out by each system's own rule (tests/fake_cluster/gpus.py): under DRA the
co-tenants get one GPU by construction, HAMi and KAI pack them, the device plugin spreads them
and the co-location check by UUID catches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes")
pytest.importorskip("kmock")

from pytest_kts import sharing_env
from pytest_kts.backends import kubernetes as kb
from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.backends.kubernetes.gpu_request import GpuRequest
from pytest_kts.config import RunSettings
from pytest_kts.errors import ClusterError, ColocationError, ConfigError
from pytest_kts.report import write_report
from pytest_kts.runner import run_scenario
from tests.fake_cluster import FakeCluster
from tests.test_kubernetes_backend import STANDIN, running_cluster
from tests.test_sharing_env import fake_smi

A = TenantSpec("a", "fft", 64)
B = TenantSpec("b", "matmul", 64, sleep_ms=1.0)
GPUS = ("GPU-aaaa0000-0000-0000-0000-000000000001", "GPU-bbbb0000-0000-0000-0000-000000000002")


def job(gpu: GpuRequest, *, claim: str | None = None, device: str = "cuda") -> dict[str, Any]:
    settings = kb.ClusterSettings(gpu=gpu, run_id="r1")
    return kb.render_job(
        settings, A, device=device, name="kts-r1-001-solo-a", phase="solo", round=0,
        iterations=10, claim=claim,
    )  # fmt: skip


def pod_of(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    template = manifest["spec"]["template"]
    return template["metadata"], template["spec"], template["spec"]["containers"][0]


# --------------------------------------------------------------------------- what each mode asks


def test_device_plugin_asks_for_one_replica() -> None:
    _, pod, container = pod_of(job(GpuRequest()))
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "resourceClaims" not in pod and "schedulerName" not in pod
    assert pod["runtimeClassName"] == "nvidia"


def test_dra_pods_name_the_phase_claim_and_ask_for_no_extended_resource() -> None:
    _, pod, container = pod_of(job(GpuRequest("dra"), claim="kts-r1-001-solo-gpu"))
    assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimName": "kts-r1-001-solo-gpu"}]
    assert container["resources"]["claims"] == [{"name": "gpu"}]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    with pytest.raises(ConfigError, match="ResourceClaim"):
        job(GpuRequest("dra"))  # a DRA pod without its claim cannot be rendered
    # On the CPU nothing asks for a GPU, in any mode.
    _, cpu_pod, cpu_container = pod_of(job(GpuRequest("dra"), device="cpu"))
    assert "resourceClaims" not in cpu_pod and "claims" not in cpu_container["resources"]


def test_the_dra_claim_is_the_drivers_quickstart_shape() -> None:
    settings = kb.ClusterSettings(
        gpu=GpuRequest("dra", dra_sharing="timeslicing", dra_interval="Short"), run_id="r1"
    )
    claim = kb.render_claim(settings, name="kts-r1-003-shared-gpu", phase="shared", round=0)
    assert claim["apiVersion"] == "resource.k8s.io/v1" and claim["kind"] == "ResourceClaim"
    assert claim["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pytest-kts"
    assert claim["metadata"]["labels"]["kts.phase"] == "shared"
    assert claim["spec"] == {
        "devices": {
            "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}],
            "config": [
                {
                    "requests": ["gpu"],
                    "opaque": {
                        "driver": "gpu.nvidia.com",
                        "parameters": {
                            "apiVersion": "resource.nvidia.com/v1beta1",
                            "kind": "GpuConfig",
                            "sharing": {
                                "strategy": "TimeSlicing",
                                "timeSlicingConfig": {"interval": "Short"},
                            },
                        },
                    },
                }
            ],
        }
    }
    mps = GpuRequest("dra", dra_sharing="mps", dra_mps_threads=50, dra_mps_memory="10Gi")
    assert mps.gpu_config() == {
        "apiVersion": "resource.nvidia.com/v1beta1",
        "kind": "GpuConfig",
        "sharing": {
            "strategy": "MPS",
            "mpsConfig": {
                "defaultActiveThreadPercentage": 50,
                "defaultPinnedDeviceMemoryLimit": "10Gi",
            },
        },
    }
    plain = GpuRequest("dra", dra_device_class="mig.nvidia.com")
    spec = plain.resource_claim("c", "kts", {})["spec"]["devices"]
    assert "config" not in spec and spec["requests"][0]["exactly"]["deviceClassName"] == (
        "mig.nvidia.com"
    )


def test_the_claim_in_the_docs_is_the_one_rendered() -> None:
    import re

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "kubernetes.md").read_text()
    block = re.search(r"```yaml\n(apiVersion: resource.k8s.io/v1\n.*?)```", text, re.S)
    assert block is not None
    documented = yaml.safe_load(block.group(1))
    gpu = GpuRequest("dra", dra_sharing="timeslicing", dra_interval="Short")
    assert documented["spec"] == gpu.resource_claim("x", "kts", {})["spec"]
    assert documented["metadata"]["name"] == kb.claim_name("3f9c2a61d0", 3, "shared")


def test_hami_asks_for_cores_and_memory_and_binpacks() -> None:
    meta, _, container = pod_of(job(GpuRequest("hami", hami_cores=30, hami_memory=3000)))
    limits = container["resources"]["limits"]
    assert (limits["nvidia.com/gpu"], limits["nvidia.com/gpucores"]) == ("1", "30")
    assert limits["nvidia.com/gpumem"] == "3000"
    assert meta["annotations"]["hami.io/gpu-scheduler-policy"] == "binpack"
    assert meta["annotations"]["kts.tenant"] == "a"  # ours stay


def test_kai_asks_by_scheduler_fraction_and_queue() -> None:
    meta, pod, container = pod_of(job(GpuRequest("kai", kai_fraction=0.25, kai_queue="team-a")))
    assert pod["schedulerName"] == "kai-scheduler"
    assert meta["annotations"]["gpu-fraction"] == "0.25"
    assert meta["labels"]["kai.scheduler/queue"] == "team-a"
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert pod_of(job(GpuRequest("kai")))[0]["annotations"]["gpu-fraction"] == "0.5"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "mig"}, "not one of device-plugin, dra, hami, kai"),
        ({"mode": "dra", "hami_cores": 30}, "--kts-hami-cores is for --kts-gpu-request hami"),
        ({"mode": "hami", "kai_fraction": 0.5}, "--kts-kai-fraction is for"),
        ({"mode": "dra", "dra_interval": "Short"}, "needs --kts-dra-sharing timeslicing"),
        ({"mode": "dra", "dra_sharing": "timeslicing", "dra_interval": "Tiny"}, "not one of"),
        ({"mode": "dra", "dra_mps_threads": 50}, "need --kts-dra-sharing mps"),
        ({"mode": "dra", "dra_sharing": "mps", "dra_mps_memory": "ten"}, "not a quantity"),
        ({"mode": "hami", "hami_cores": 130}, "1..100"),
        ({"mode": "kai", "kai_fraction": 1.5}, r"\(0, 1\]"),
    ],
)
def test_a_request_that_cannot_work_is_refused_with_the_option_to_fix(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        GpuRequest(**kwargs)


def test_the_settings_come_from_the_plugins_options() -> None:
    run = RunSettings(cluster=True, gpu_request="hami", hami_cores=40, hami_memory=2048)
    gpu = kb.cluster_settings(run).gpu
    assert (gpu.mode, gpu.hami_cores, gpu.hami_memory) == ("hami", 40, 2048)
    run = RunSettings(cluster=True, gpu_request="dra", dra_sharing="mps", dra_mps_threads=25)
    assert kb.cluster_settings(run).gpu.gpu_config()["sharing"] == {  # type: ignore[index]
        "strategy": "MPS", "mpsConfig": {"defaultActiveThreadPercentage": 25},
    }  # fmt: skip
    marked = RunSettings(cluster=True).with_marker({"gpu_request": "kai", "kai_fraction": 0.3})
    assert (
        kb.cluster_settings(marked).gpu.describe() == "KAI: gpu-fraction 0.3, queue default-queue"
    )


# --------------------------------------------------------------------------- end to end, per mode


@pytest.fixture(autouse=True)
def quick_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knobs, "START_LEAD_DEFAULT_S", 1.0)
    monkeypatch.setattr(knobs, "START_LEAD_MARGIN_S", 0.3)


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Container processes of the fake cluster find this nvidia-smi: as in a GPU pod."""
    fake_smi(tmp_path / "smi", policy="Short", mig="Disabled")
    monkeypatch.setenv("PATH", f"{tmp_path / 'smi'}:{os.environ['PATH']}")
    sharing_env._smi.cache_clear()


def _cluster(**kwargs: Any) -> contextlib.AbstractContextManager[FakeCluster]:
    """A fake node with two GPUs (and the sharing system of ``kwargs``)."""
    return running_cluster(gpu_uuids=GPUS, **kwargs)


def _settings(cluster: FakeCluster, tmp_path: Path, gpu: GpuRequest) -> kb.ClusterSettings:
    return kb.ClusterSettings(
        kubeconfig=str(cluster.write_kubeconfig(tmp_path)),
        worker_command=STANDIN,
        pending_grace_s=0.5,
        run_id=f"t{uuid.uuid4().hex[:8]}",
        gpu=gpu,
    )


RUN = RunSettings(iterations=20, round_iterations=20, timeout=60.0, max_seconds=120.0)


def _run(settings: kb.ClusterSettings, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """One fixed-protocol scenario through the real runner; the result and its summary.json."""
    backend = kb.KubernetesBackend(settings)
    result = run_scenario("mode", [A, B], RUN, device="cuda", backend=backend)
    write_report([result], tmp_path / "report", command="test")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    return result, summary["scenarios"][0]


def _shared_uuids(result: Any) -> set[str]:
    by_tenant = result.backend["gpu_uuids_by_tenant"]
    return {u for t in ("a", "b") for u in by_tenant[t]["shared"]}


MODES = {
    "dra": ({"dra": True}, GpuRequest("dra", dra_sharing="timeslicing", dra_interval="Short")),
    "hami": ({"hami": True}, GpuRequest("hami", hami_cores=30, hami_memory=3000)),
    "kai": ({"kai": True}, GpuRequest("kai", kai_fraction=0.5)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_a_run_per_mode_lands_co_tenants_on_one_gpu_and_records_the_environment(
    mode: str, tmp_path: Path, fake_nvidia_smi: None
) -> None:
    system, gpu = MODES[mode]
    with _cluster(**system) as cluster:
        settings = _settings(cluster, tmp_path, gpu)
        result, summary = _run(settings, tmp_path)
        assert len(_shared_uuids(result)) == 1  # one GPU, verified by the UUID check
        record = summary["sharing_env"]
        assert record["time_slice"] == "Short" and record["mig_mode"] == "Disabled"
        assert summary["backend"]["gpu_request"] == mode
        pods = [j["spec"]["template"]["spec"] for j in cluster.created_jobs()]
        assert len(pods) == 4  # solo a, solo b, shared a and b
        if mode == "dra":
            claims = cluster.created_claims()
            assert len(claims) == 3 and cluster.claims() == []  # one per phase, all deleted
            shared_claim = {p["resourceClaims"][0]["resourceClaimName"] for p in pods[2:]}
            assert shared_claim == {claims[2]["metadata"]["name"]}
            assert len({p["resourceClaims"][0]["resourceClaimName"] for p in pods}) == 3
        if mode == "hami":
            # HAMi's variables, as its device plugin puts them in the container.
            assert record["tenants"]["a"]["hami"] == {
                "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m", "CUDA_DEVICE_SM_LIMIT": "30",
            }  # fmt: skip
            assert "a: HAMi CUDA_DEVICE_MEMORY_LIMIT_0=3000m" in sharing_env.describe(record)
        if mode == "kai":
            assert {p["schedulerName"] for p in pods} == {"kai-scheduler"}
        assert cluster.jobs() == []


def test_the_device_plugin_spreads_co_tenants_and_the_uuid_check_says_so(
    tmp_path: Path,
) -> None:
    """Two GPUs, distributed replicas: the shared phase ran on two GPUs, and that is an error."""
    with _cluster() as cluster:
        with pytest.raises(ColocationError, match="different GPUs"):
            _run(_settings(cluster, tmp_path, GpuRequest()), tmp_path)
        assert cluster.jobs() == []


def test_the_device_plugin_on_a_one_gpu_node_is_co_located(tmp_path: Path) -> None:
    with running_cluster(gpu_uuids=GPUS[:1]) as cluster:
        result, summary = _run(_settings(cluster, tmp_path, GpuRequest()), tmp_path)
        assert _shared_uuids(result) == {GPUS[0]}
        assert summary["backend"]["gpu_request_detail"] == "device plugin: nvidia.com/gpu: 1"


def test_kai_requested_where_no_kai_scheduler_runs_says_so(tmp_path: Path) -> None:
    with _cluster() as cluster:
        with kb.KubernetesBackend(_settings(cluster, tmp_path, GpuRequest("kai"))) as backend:
            backend.start([A], "cuda")
            with pytest.raises(ClusterError) as info:
                backend.run_phase(PhasePlan("solo", 0, {"a": 5}), 30)
        assert "no scheduler named 'kai-scheduler' took it" in str(info.value)
        assert "installed and running" in str(info.value)
        assert cluster.jobs() == []


def test_hami_limits_where_no_hami_runs_are_unschedulable_with_a_hint(tmp_path: Path) -> None:
    with _cluster() as cluster:
        gpu = GpuRequest("hami", hami_cores=30)
        with kb.KubernetesBackend(_settings(cluster, tmp_path, gpu)) as backend:
            backend.start([A], "cuda")
            with pytest.raises(ClusterError) as info:
                backend.run_phase(PhasePlan("solo", 0, {"a": 5}), 30)
        assert "Insufficient nvidia.com/gpucores" in str(info.value)
        assert "HAMi found no GPU" in str(info.value)


def test_dra_on_a_cluster_without_the_resource_api_is_one_clear_line(tmp_path: Path) -> None:
    with _cluster() as cluster:  # no dra=True: resource.k8s.io is not served
        with kb.KubernetesBackend(_settings(cluster, tmp_path, GpuRequest("dra"))) as backend:
            backend.start([A], "cuda")
            with pytest.raises(ClusterError) as info:
                backend.run_phase(PhasePlan("solo", 0, {"a": 5}), 30)
        message = str(info.value)
        assert "serves no resource.k8s.io/v1 ResourceClaims" in message and "\n" not in message
        assert cluster.jobs() == [] and cluster.created_jobs() == []  # nothing was started


def test_dra_claims_left_at_an_interrupt_are_deleted_with_the_jobs(tmp_path: Path) -> None:
    """A phase that fails leaves its claim to close(), which deletes it with the Jobs."""
    with _cluster(dra=True) as cluster:
        settings = dataclasses.replace(
            _settings(cluster, tmp_path, GpuRequest("dra")),
            worker_command=("python", "-c", "import sys; sys.exit(1)"),
        )
        with kb.KubernetesBackend(settings) as backend:
            backend.start([A], "cuda")
            with pytest.raises(Exception):  # noqa: B017 - the worker's failure, whatever it says
                backend.run_phase(PhasePlan("solo", 0, {"a": 5}), 30)
            assert len(cluster.claims()) == 1  # the failed phase's claim: not yet deleted
        assert cluster.claims() == [] and cluster.jobs() == []
        assert backend.left_behind == []


@pytest.mark.parametrize("mode", ["device-plugin", *MODES])
def test_each_mode_needs_only_what_its_rbac_grants(mode: str, tmp_path: Path) -> None:
    import yaml

    system, gpu = MODES.get(mode, ({}, GpuRequest()))
    repo = Path(__file__).resolve().parents[1] / "manifests"
    files = ["rbac.yaml"] + (["rbac-dra.yaml"] if mode == "dra" else [])
    granted = {
        (verb, resource)
        for name in files
        for doc in yaml.safe_load_all((repo / name).read_text())
        if doc and doc["kind"] == "Role"
        for rule in doc["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    gpus = GPUS[:1] if mode == "device-plugin" else GPUS  # one GPU: co-located, so it runs
    with running_cluster(gpu_uuids=gpus, **system) as cluster:
        _run(_settings(cluster, tmp_path, gpu), tmp_path)
        used = {(v, f"{r}/{sub}" if sub else r) for v, r, sub, _ in cluster.seen}
    assert used <= granted, f"not granted for {mode}: {sorted(used - granted)}"
    if mode == "dra":
        assert {("create", "resourceclaims"), ("delete", "resourceclaims")} <= used
