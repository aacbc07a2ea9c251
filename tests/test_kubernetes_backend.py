"""KubernetesBackend against a fake cluster: the real ``kubernetes`` client over HTTP.

The fake (tests/fake_cluster) is kmock's API emulator plus a Job controller and a kubelet that
runs each Job's container command as a local process. Most tests run a stand-in worker that
starts in milliseconds; one runs the real ``pytest_kts.workers.run`` on the CPU.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import importlib.util
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_kts.constants import WORKER_MODULE

pytest.importorskip("kubernetes")
pytest.importorskip("kmock")

import yaml

from pytest_kts.backends import kubernetes as kb
from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.kubernetes import logs
from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.backends.kubernetes.state import TenantRun
from pytest_kts.errors import ClusterError, ColocationError, ConfigError, WorkerError
from pytest_kts.protocol import LineReader, Sample, format_sample
from tests.fake_cluster import FakeCluster, PodBehaviour, inject_gpu_uuid
from tests.fake_cluster.emulator import field_matcher, label_matcher, rfc3339nano

STANDIN = ("python", "-m", "tests.fake_cluster.standin_worker")
REPO = Path(__file__).resolve().parents[1]
A = TenantSpec("a", "fft", 64)
B = TenantSpec("b", "matmul", 64, sleep_ms=2.0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def quick_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared phase's start barrier sized for millisecond pods, not for image pulls."""
    monkeypatch.setattr(knobs, "START_LEAD_DEFAULT_S", 1.0)
    monkeypatch.setattr(knobs, "START_LEAD_MARGIN_S", 0.3)


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[FakeCluster]:
    """A fresh fake cluster; afterwards no container process and no thread may be left."""
    before = set(threading.enumerate())
    fake = FakeCluster(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
        assert fake.live_processes() == [], "container processes outlived the fake cluster"
        assert _new_threads(before) == [], "threads outlived the test"


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with running_cluster() as fake:
        yield fake


def make_settings(cluster: FakeCluster, tmp_path: Path, **overrides: Any) -> kb.ClusterSettings:
    values: dict[str, Any] = {
        "kubeconfig": str(cluster.write_kubeconfig(tmp_path)),
        "worker_command": STANDIN,
        "pending_grace_s": 0.5,
        "run_id": f"t{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    return kb.ClusterSettings(**values)


@pytest.fixture
def settings(cluster: FakeCluster, tmp_path: Path) -> kb.ClusterSettings:
    return make_settings(cluster, tmp_path)


def solo(backend: kb.KubernetesBackend, tenant: str, n: int = 20, timeout: float = 30) -> Any:
    return backend.run_phase(PhasePlan("solo", 0, {tenant: n}), timeout)


def iterations(reader: LineReader) -> list[int]:
    return [s.iteration for s in reader.samples]


# --------------------------------------------------------------------------- pure parts


def test_render_job_for_a_gpu_pinned_to_a_node() -> None:
    settings = kb.ClusterSettings(node="gpu-1", run_id="Run_42", memory_limit="8Gi")
    job = kb.render_job(
        settings,
        TenantSpec("FFT.small", "fft", 256, env={"X": "1"}),
        device="cuda",
        name="kts-x-001-shared-fft",
        phase="shared",
        round=3,
        iterations=100,
        start_at_ns=1_700_000_000_000_000_000,
        min_duration_s=12.5,
        deadline_s=300,
    )
    kubernetes = pytest.importorskip("kubernetes")
    kubernetes.client.V1Job.model_validate(job)  # the client's schema: no unknown field
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels == job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "pytest-kts"
    assert labels["kts.run-id"] == "Run_42"
    assert labels["kts.tenant"] == "FFT.small"
    assert (labels["kts.phase"], labels["kts.round"]) == ("shared", "3")
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == knobs.TTL_S
    assert spec["activeDeadlineSeconds"] == 300 + knobs.DEADLINE_SLACK_S
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "gpu-1"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"] == {
        "memory": "8Gi",
        "nvidia.com/gpu": "1",
        "ephemeral-storage": "4Gi",
    }
    assert "cpu" not in container["resources"]["limits"]
    assert container["command"] == ["python", "-m", WORKER_MODULE]
    args = container["args"]
    assert args[: len(TenantSpec("FFT.small", "fft", 256).worker_argv("cuda"))] == TenantSpec(
        "FFT.small", "fft", 256
    ).worker_argv("cuda")
    assert args[args.index("--phase") + 1] == "shared"
    assert args[args.index("--round") + 1] == "3"
    assert args[args.index("--iterations") + 1] == "100"
    assert args[args.index("--start-at-ns") + 1] == "1700000000000000000"
    assert float(args[args.index("--min-duration-s") + 1]) == pytest.approx(12.5)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1" and env["KTS_RUN_ID"] == "Run_42"
    assert kb.job_template()["spec"]["template"]["spec"].get("runtimeClassName") is None


def test_render_job_on_cpu_asks_for_no_gpu() -> None:
    job = kb.render_job(
        kb.ClusterSettings(keep_jobs=True),
        A,
        device="cpu",
        name="kts-x-001-solo-a",
        phase="solo",
        round=0,
        iterations=10,
    )
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources["requests"]
    assert "nvidia.com/gpu" not in resources.get("limits", {})
    assert "runtimeClassName" not in pod and "nodeSelector" not in pod
    assert "--start-at-ns" not in pod["containers"][0]["args"]
    assert job["spec"]["ttlSecondsAfterFinished"] == knobs.TTL_KEPT_S


def test_names_and_labels_stay_valid_and_distinct() -> None:
    long = "x" * 63
    names = {kb.job_name("run-id-that-is-long", 7, "shared", t) for t in ("a_b", "a.b", long)}
    assert len(names) == 3
    for name in names:
        assert len(name) <= 52 and knobs._DNS_LABEL.match(name), name
    assert kb.label_value("plain-name") == "plain-name"
    for odd in ("ends-with-", "_x_", long + "y", "a/b"):
        value = kb.label_value(odd)
        assert len(value) <= 63 and knobs._LABEL_VALUE.match(value), value
    assert kb.label_value("a_") != kb.label_value("a.")


def test_settings_from_the_plugins_options() -> None:
    config = pytest.importorskip("pytest_kts.config")
    run = config.RunSettings(
        cluster=True, namespace="ci", image="reg/worker:1", node="n1", runtime_class=None,
        timeout=120.0, keep_jobs=True, kubeconfig="/k", context="ctx",
    )  # fmt: skip
    settings = kb.cluster_settings(run)
    assert (settings.namespace, settings.image, settings.node) == ("ci", "reg/worker:1", "n1")
    assert settings.runtime_class is None and settings.timeout_s == 120.0
    assert settings.keep_jobs and (settings.kubeconfig, settings.context) == ("/k", "ctx")
    backend = kb.make_cluster_backend(run)
    assert isinstance(backend, kb.KubernetesBackend)
    assert backend.settings == dataclasses.replace(settings, run_id=backend.settings.run_id)
    backend.close()


def test_settings_reject_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="namespace"):
        kb.ClusterSettings(namespace="Not_A_Namespace")
    with pytest.raises(ConfigError, match="timeout"):
        kb.ClusterSettings(timeout_s=0)
    assert kb.ClusterSettings().run_id != kb.ClusterSettings().run_id


def test_log_timestamps_parse_to_epoch_ns() -> None:
    assert kb.parse_timestamp_ns("1970-01-01T00:00:01Z") == 1_000_000_000
    assert kb.parse_timestamp_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert kb.parse_timestamp_ns("2024-05-01T10:00:00.000000123+02:00") == (
        kb.parse_timestamp_ns("2024-05-01T08:00:00Z") + 123  # type: ignore[operator]
    )
    assert kb.parse_timestamp_ns("KTS_APP,v2,a") is None
    ns = 1_714_557_600_123_450_000
    assert kb.parse_timestamp_ns(rfc3339nano(ns)) == ns


def test_reopened_log_skips_lines_already_seen() -> None:
    run = TenantRun(tenant="a", job="j", created_ns=0)
    lines = [
        f"{rfc3339nano(10**18 + t)} {format_sample(Sample('a', 'solo', 0, i, 1, 2, 1.0, 0.5))}"
        for i, t in enumerate([0, 5, 5, 9])  # two lines share a timestamp
    ]
    skip = 0
    for line in lines[:3]:
        skip = logs.take(run, line.encode(), skip)
    # The stream drops and reopens from the start: only the 4th line is new.
    skip = run.at_last_ts
    for line in lines:
        skip = logs.take(run, line.encode(), skip)
    assert iterations(run.reader) == [0, 1, 2, 3]


def test_shared_samples_are_trimmed_to_the_window_all_tenants_measured() -> None:
    backend = kb.KubernetesBackend(kb.ClusterSettings())
    plan = PhasePlan("shared", 0, {"a": 3, "b": 3})
    runs = {}
    for tenant, starts in (("a", range(0, 100, 10)), ("b", range(45, 200, 10))):
        run = TenantRun(tenant=tenant, job=f"j-{tenant}", created_ns=0)
        for i, t in enumerate(starts):
            run.reader.feed(format_sample(Sample(tenant, "shared", 0, i, t, t + 5, 5.0, 1.0)))
        runs[tenant] = run
    record: dict[str, Any] = {"tenants": {"a": {}, "b": {}}}
    backend._trim_to_overlap(plan, runs, record)
    # a measured 0..95, b 45..195: only 45..95 had both.
    assert [s.start_ns for s in runs["a"].reader.samples] == [50, 60, 70, 80, 90]
    assert [s.start_ns for s in runs["b"].reader.samples] == [45, 55, 65, 75, 85]
    assert record["tenants"]["a"]["dropped_outside_overlap"] == 5
    assert record["tenants"]["b"]["dropped_outside_overlap"] == 11
    apart = {"a": (0, 10), "b": (50, 60)}
    for tenant, (t0, t1) in apart.items():
        runs[tenant].reader.samples[:] = [
            Sample(tenant, "shared", 0, i, t, t + 5, 5.0, 1.0) for i, t in enumerate((t0, t1))
        ]
    with pytest.raises(ColocationError, match="never measured at the same time"):
        backend._trim_to_overlap(plan, runs, record)


def test_fake_selectors_and_meta_injection() -> None:
    match = label_matcher("app=x,tier!=db,env in (a, b),!gone,kts.job")
    assert match({"app": "x", "tier": "web", "env": "b", "kts.job": "j"})
    assert not match({"app": "x", "tier": "db", "env": "b", "kts.job": "j"})
    assert not match({"app": "x", "env": "c", "kts.job": "j"})
    assert not match({"app": "x", "env": "a", "kts.job": "j", "gone": "1"})
    assert field_matcher("involvedObject.name=p1")({"involvedObject": {"name": "p1"}})
    assert not field_matcher("involvedObject.name=p1")({"involvedObject": {"name": "p2"}})
    line = b'KTS_META,v2,a,{"device":"cpu","pid":1}\n'
    reader = LineReader().feed_all([inject_gpu_uuid(line, "GPU-1").decode()])
    assert reader.metas[0].facts["gpu_uuid"] == "GPU-1"
    assert inject_gpu_uuid(b"other\n", "GPU-1") == b"other\n"


# --------------------------------------------------------------------------- reachability


def test_check_reachable_passes_against_a_cluster(settings: kb.ClusterSettings) -> None:
    kb.check_reachable(settings)


def test_check_reachable_fails_fast_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "c", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "c"}}],
            }
        )
    )
    started = time.monotonic()
    with pytest.raises(ClusterError) as info:
        kb.check_reachable(kb.ClusterSettings(kubeconfig=str(kubeconfig)))
    assert time.monotonic() - started < 6
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("no Kubernetes cluster reachable at")
    assert "refused" in message.lower() and "KUBECONFIG" in message


def test_missing_kubeconfig_and_unknown_context_are_one_line(
    tmp_path: Path, cluster: FakeCluster
) -> None:
    with pytest.raises(ClusterError, match=r"kubeconfig .* does not exist; set KUBECONFIG"):
        kb.check_reachable(kb.ClusterSettings(kubeconfig=str(tmp_path / "nope.yaml")))
    path = cluster.write_kubeconfig(tmp_path)
    with pytest.raises(ClusterError, match="cannot be used") as info:
        kb.check_reachable(kb.ClusterSettings(kubeconfig=str(path), context="missing"))
    assert "\n" not in str(info.value)


def test_no_configuration_at_all(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ClusterError, match="not running in a pod; set KUBECONFIG"):
        kb.connect(kb.ClusterSettings())


# --------------------------------------------------------------------------- happy paths


def test_solo_and_shared_phases_run_as_jobs(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A, B], "cpu")
        out_a = solo(backend, "a", 30)
        out_b = solo(backend, "b", 30)
        shared = backend.run_phase(PhasePlan("shared", 0, {"a": 30, "b": 30}), 30)
        for out, tenant in ((out_a, "a"), (out_b, "b")):
            reader = out.readers[tenant]
            assert iterations(reader) == list(range(30))
            assert reader.malformed == 0 and reader.foreign == 1
            assert out.ended_ns > out.started_ns
        # The shared phase: both tenants measured, and at the same time.
        spans = {}
        for tenant, reader in shared.readers.items():
            assert reader.samples and {s.phase for s in reader.samples} == {"shared"}
            spans[tenant] = (
                min(s.start_ns for s in reader.samples),
                max(s.end_ns for s in reader.samples),
            )
        assert max(b for b, _ in spans.values()) < min(e for _, e in spans.values())
        facts = backend.facts()
        jobs = cluster.jobs()
        assert len(jobs) == 4  # solo a, solo b, shared a + b
    assert cluster.jobs() == [] and cluster.pods() == []  # close() deleted Jobs and pods
    assert cluster.live_processes() == []
    shared_jobs = [j for j in jobs if j["metadata"]["labels"]["kts.phase"] == "shared"]
    starts = set()
    for job in shared_jobs:
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        starts.add(args[args.index("--start-at-ns") + 1])
        assert float(args[args.index("--min-duration-s") + 1]) > 0
        labels = job["metadata"]["labels"]
        assert labels["kts.run-id"] == settings.run_id
        assert labels["app.kubernetes.io/managed-by"] == "pytest-kts"
    assert len(starts) == 1, "co-tenants must share one start instant"
    assert facts["nodes"] == ["fake-node"]
    assert set(facts["pods"]) == {"a", "b"} and len(facts["pods"]["a"]) == 2
    shared_record = facts["phases"][-1]
    assert shared_record["phase"] == "shared"
    assert shared_record["colocation"].startswith("not checked")
    assert any("not checked" in note for note in facts["notes"])
    assert shared_record["overlap_s"] > 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch (CPU)")
def test_the_real_worker_runs_as_a_job(cluster: FakeCluster, tmp_path: Path) -> None:
    settings = make_settings(cluster, tmp_path, worker_command=("python", "-m", WORKER_MODULE))
    fft = TenantSpec("fft", "fft", 64, warmup=2)
    gemm = TenantSpec("gemm", "matmul", 64, warmup=2)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([fft, gemm], "cpu")
        solo(backend, "fft", 20, timeout=60)
        solo(backend, "gemm", 20, timeout=60)
        out = backend.run_phase(PhasePlan("shared", 0, {"fft": 20, "gemm": 20}), 60)
        for tenant, reader in out.readers.items():
            assert reader.samples, tenant
            assert {s.tenant for s in reader.samples} == {tenant}
            assert all(s.host_ms >= 0 for s in reader.samples)
            assert reader.metas and reader.metas[0].facts["device"] == "cpu"
            assert any(e.name == "phase_end" for e in reader.events)
            assert reader.malformed == 0
        assert backend.facts()["phases"][-1]["tenants"]["fft"]["device"] == "cpu"
    assert cluster.jobs() == []


# --------------------------------------------------------------------------- robust collection


def test_log_lines_split_across_chunks(cluster: FakeCluster, settings: kb.ClusterSettings) -> None:
    cluster.script(PodBehaviour(chunk_bytes=7))
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        reader = solo(backend, "a", 25).readers["a"]
    assert iterations(reader) == list(range(25))
    assert reader.malformed == 0 and reader.foreign == 1


def test_log_answers_400_while_the_container_is_created(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(creating_s=1.0))
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        reader = solo(backend, "a", 10).readers["a"]
        waits = backend.facts()["phases"][0]["tenants"]["a"]["log_waits"]
    assert iterations(reader) == list(range(10))
    assert cluster.log_waits >= 1 and waits >= 1


def test_a_dropped_log_stream_resumes_without_duplicates(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(drop_log_after_lines=5))
    slow = TenantSpec("a", "fft", 64, sleep_ms=10)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([slow], "cpu")
        reader = solo(backend, "a", 40).readers["a"]
        opens = backend.facts()["phases"][0]["tenants"]["a"]["log_opens"]
    assert opens >= 2
    assert iterations(reader) == list(range(40))
    assert len(reader.metas) == 1


def test_a_silent_log_stream_is_reopened_after_its_idle_timeout(
    cluster: FakeCluster, settings: kb.ClusterSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(knobs, "LOG_IDLE_TIMEOUT_S", 0.2)
    quiet = TenantSpec("a", "fft", 64, sleep_ms=500)  # silent for longer than the read timeout
    with kb.KubernetesBackend(settings) as backend:
        backend.start([quiet], "cpu")
        reader = solo(backend, "a", 3).readers["a"]
        opens = backend.facts()["phases"][0]["tenants"]["a"]["log_opens"]
    assert opens >= 2
    assert iterations(reader) == [0, 1, 2]
    assert [e.name for e in reader.events].count("phase_end") == 1


def test_a_watch_that_ends_in_410_gone_is_relisted(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.expire_next_watches(2)
    slow = TenantSpec("a", "fft", 64, sleep_ms=40)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([slow], "cpu")
        reader = solo(backend, "a", 20).readers["a"]
        relists = backend.facts()["watch_relists_after_410"]
    assert iterations(reader) == list(range(20))
    assert cluster.watches_expired == 2
    assert relists == 2
    lists = [s for s in cluster.seen if s[:2] == ("list", "jobs")]
    assert len(lists) >= 3  # the first listing and one after each 410


# --------------------------------------------------------------------------- failure modes


def test_image_pull_backoff_fails_with_the_pod_events(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(image_pull_error=True), tenant="a")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        started = time.monotonic()
        with pytest.raises(ClusterError) as info:
            solo(backend, "a")
        assert time.monotonic() - started < 10
    message = str(info.value)
    assert "ImagePullBackOff" in message or "ErrImagePull" in message
    assert 'Failed to pull image "pytest-kts-worker:0.2.0"' in message  # from the events
    assert "--kts-image" in message
    assert cluster.jobs() == []


def test_an_unschedulable_pod_fails_with_the_scheduler_events(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(unschedulable=True), tenant="a")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        with pytest.raises(ClusterError) as info:
            solo(backend, "a")
    message = str(info.value)
    assert "Unschedulable" in message
    assert "FailedScheduling (default-scheduler)" in message
    assert "untolerated taint" in message


def test_a_node_pin_to_a_missing_node_is_unschedulable(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    settings = make_settings(cluster, tmp_path, node="gpu-node-7")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        with pytest.raises(ClusterError, match="didn't match Pod's node affinity/selector"):
            solo(backend, "a")
    created = cluster.created_jobs()
    pod = created[0]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "gpu-node-7"}


def test_too_few_gpu_replicas_leave_a_co_tenant_pending(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with FakeCluster(gpus_per_node=1) as cluster:
        settings = make_settings(cluster, tmp_path)
        with kb.KubernetesBackend(settings) as backend:
            backend.start([A, B], "cuda")
            with pytest.raises(ClusterError, match=r"Insufficient nvidia\.com/gpu"):
                backend.run_phase(PhasePlan("shared", 0, {"a": 200, "b": 200}), 30)
    assert _new_threads(before) == []


def test_a_missing_runtime_class_makes_no_pod(tmp_path: Path) -> None:
    with FakeCluster(runtime_classes=()) as cluster:
        settings = make_settings(cluster, tmp_path)
        with kb.KubernetesBackend(settings) as backend:
            backend.start([A], "cuda")
            with pytest.raises(ClusterError, match="made no pod") as info:
                solo(backend, "a")
    assert 'RuntimeClass "nvidia" not found' in str(info.value)


def test_oom_killed(cluster: FakeCluster, settings: kb.ClusterSettings) -> None:
    cluster.script(PodBehaviour(oom_after_lines=3), tenant="a")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        with pytest.raises(WorkerError) as info:
            solo(backend, "a", 50)
    error = info.value
    assert error.oom is True and error.tenant == "a"
    assert "OOMKilled" in str(error) and "exited with code 137" in str(error)
    assert "BackoffLimitExceeded" in str(error)
    assert "memory limit" in str(error)


def test_a_crash_reports_exit_code_log_tail_and_events(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(crash_after_lines=4), tenant="a")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        with pytest.raises(WorkerError) as info:
            solo(backend, "a", 50)
    error = info.value
    assert error.oom is False
    assert "exited with code 1 (Error)" in str(error)
    assert "RuntimeError: crash injected by the fake cluster" in error.stderr_tail
    assert "Started (kubelet)" in str(error)  # pod events
    assert "BackoffLimitExceeded (job-controller)" in str(error)  # Job events


def test_a_worker_that_rejects_its_arguments(cluster: FakeCluster, tmp_path: Path) -> None:
    command = (
        "python",
        "-c",
        "import sys; print('usage: bad --flag', file=sys.stderr); sys.exit(2)",
    )
    settings = make_settings(cluster, tmp_path, worker_command=command)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        with pytest.raises(WorkerError, match="rejected its arguments") as info:
            solo(backend, "a")
    assert "usage: bad --flag" in info.value.stderr_tail


def test_a_hung_worker_times_out_and_is_cleaned_up(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(hang_after_lines=3), tenant="a")
    backend = kb.KubernetesBackend(settings)
    backend.start([A], "cpu")
    started = time.monotonic()
    with pytest.raises(WorkerError, match="did not finish within 2 s") as info:
        backend.run_phase(PhasePlan("solo", 0, {"a": 1000}), 2)
    assert time.monotonic() - started < 8
    assert "hung" in str(info.value)
    assert cluster.live_processes() != []  # still frozen until close()
    backend.close()
    assert cluster.jobs() == [] and cluster.pods() == []
    deadline = time.monotonic() + 5
    while cluster.live_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.live_processes() == []


def test_a_pod_that_never_starts_times_out_as_a_cluster_error(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(creating_s=5.0), tenant="a")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        with pytest.raises(ClusterError, match="printed nothing"):
            solo(backend, "a", timeout=1.5)


def test_a_missing_namespace(cluster: FakeCluster, tmp_path: Path) -> None:
    settings = make_settings(cluster, tmp_path, namespace="elsewhere")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        with pytest.raises(ClusterError, match="namespace 'elsewhere' does not exist") as info:
            solo(backend, "a")
    assert "manifests/namespace.yaml" in str(info.value)


# --------------------------------------------------------------------------- co-location


def test_different_gpu_uuids_in_the_shared_phase(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(gpu_uuid="GPU-aaaa"), tenant="a")
    cluster.script(PodBehaviour(gpu_uuid="GPU-bbbb"), tenant="b")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A, B], "cuda")
        with pytest.raises(ColocationError) as info:
            backend.run_phase(PhasePlan("shared", 2, {"a": 20, "b": 20}), 30)
        facts = backend.facts()
    message = str(info.value)
    assert "GPU-aaaa" in message and "GPU-bbbb" in message
    assert "--kts-node" in message and "distributed" in message
    assert facts["gpu_uuids"] == ["GPU-aaaa", "GPU-bbbb"]
    assert facts["gpu_uuids_by_tenant"] == {
        "a": {"shared": ["GPU-aaaa"]},
        "b": {"shared": ["GPU-bbbb"]},
    }
    job = cluster.created_jobs()[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_one_gpu_uuid_is_verified_and_reported(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(gpu_uuid="GPU-1234"))
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A, B], "cuda")
        solo(backend, "a", 10)
        out = backend.run_phase(PhasePlan("shared", 0, {"a": 10, "b": 10}), 30)
        facts = backend.facts()
    assert all(r.samples for r in out.readers.values())
    assert facts["phases"][-1]["colocation"] == "verified: all tenants on GPU-1234"
    assert facts["gpu_uuids_by_tenant"]["a"] == {"solo": ["GPU-1234"], "shared": ["GPU-1234"]}
    assert facts["gpu_uuids"] == ["GPU-1234"]
    assert facts["phases"][-1]["tenants"]["b"]["gpu_uuid"] == "GPU-1234"
    assert facts["tenants"]["b"]["gpu_uuid"] == "GPU-1234"  # the runner's per-tenant meta
    assert facts["tenants"]["b"]["node"] == "fake-node"
    backend.check_colocated()


# --------------------------------------------------------------------------- cleanup


def test_ctrl_c_deletes_the_jobs(cluster: FakeCluster, settings: kb.ClusterSettings) -> None:
    cluster.script(PodBehaviour(hang_after_lines=3), tenant="a")
    backend = kb.KubernetesBackend(settings)
    backend.start([A], "cpu")

    def interrupt_when_running() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(p.get("status", {}).get("phase") == "Running" for p in cluster.pods()):
                break
            time.sleep(0.05)
        _thread.interrupt_main()

    helper = threading.Thread(target=interrupt_when_running)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            backend.run_phase(PhasePlan("solo", 0, {"a": 1000}), 30)
    finally:
        helper.join()
    assert cluster.jobs() == [] and cluster.pods() == []  # without close()
    deadline = time.monotonic() + 5
    while cluster.live_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.live_processes() == []
    backend.close()


def test_keep_jobs_leaves_them_for_inspection(cluster: FakeCluster, tmp_path: Path) -> None:
    settings = make_settings(cluster, tmp_path, keep_jobs=True)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A], "cpu")
        solo(backend, "a", 5)
    jobs = cluster.jobs()
    assert len(jobs) == 1 and len(cluster.pods()) == 1
    assert jobs[0]["spec"]["ttlSecondsAfterFinished"] == knobs.TTL_KEPT_S
    conditions = {c["type"]: c["status"] for c in jobs[0]["status"]["conditions"]}
    assert conditions["Complete"] == "True"


def test_the_backend_needs_only_what_the_rbac_role_grants(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.script(PodBehaviour(crash_after_lines=3), tenant="b")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A, B], "cpu")
        solo(backend, "a", 5)
        with pytest.raises(WorkerError):
            solo(backend, "b", 50)
    kb.check_reachable(settings)
    docs = list(yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    granted = {
        (verb, resource)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    used = {
        (verb, f"{resource}/{sub}" if sub else resource) for verb, resource, sub, _ in cluster.seen
    }
    assert used <= granted, f"not granted by manifests/rbac.yaml: {sorted(used - granted)}"
    assert {ns for *_, ns in cluster.seen} == {settings.namespace}
    assert ("create", "jobs") in used and ("get", "pods/log") in used
    assert ("delete", "jobs") in used and ("list", "events") in used
