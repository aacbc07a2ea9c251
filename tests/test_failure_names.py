"""Worker failures are named from evidence: OOM only from CUDA's or torch's own words (or an
OOM kill on a cluster), never from exit code 3 alone; the exception type always in the
headline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.local import LocalBackend
from pytest_kts.constants import WORKER_MODULE
from pytest_kts.errors import WorkerError

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(HERE)}


def _fail(workload: str) -> WorkerError:
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start([TenantSpec("victim", workload, 8, sleep_ms=0.5, warmup=1)], "cpu")
        with pytest.raises(WorkerError) as info:
            backend.run_phase(PhasePlan("solo", 0, {"victim": 50}), timeout_s=60)
    return info.value


@pytest.mark.parametrize("workload", ["exit3", "host_oom_words"])
def test_exit_code_3_without_cuda_words_is_not_oom(workload: str) -> None:
    error = _fail(f"kts_fault_workloads:{workload}")
    assert error.oom is False
    assert "exit code 3" in str(error)
    assert "CUDA out of memory" not in error.what


def test_an_empty_message_still_names_the_exception() -> None:
    error = _fail("kts_fault_workloads:empty_memory_error")
    assert error.oom is False
    assert error.what.startswith("failed: MemoryError")
    assert not re.search(r"failed: *$", error.what.splitlines()[0])


def test_torch_out_of_memory_is_oom_with_its_type() -> None:
    error = _fail("kts_test_workloads:oom")
    assert error.oom is True
    assert "CUDA out of memory: OutOfMemoryError: CUDA out of memory." in error.what


# --------------------------------------------------------------------------- on a cluster


@pytest.fixture
def cluster() -> object:
    pytest.importorskip("kubernetes")
    pytest.importorskip("kmock")
    from tests.fake_cluster import FakeCluster

    fake = FakeCluster().start()
    try:
        yield fake
    finally:
        fake.stop()


def _fail_on_cluster(cluster: object, tmp_path: Path, workload: str) -> WorkerError:
    from pytest_kts.backends import kubernetes as kb
    from tests.test_kubernetes_backend import make_settings

    settings = make_settings(
        cluster,  # type: ignore[arg-type]
        tmp_path,
        worker_command=("python", "-m", WORKER_MODULE),
    )
    spec = TenantSpec("victim", workload, 8, sleep_ms=0.5, warmup=1, env=ENV)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([spec], "cpu")
        with pytest.raises(WorkerError) as info:
            backend.run_phase(PhasePlan("solo", 0, {"victim": 50}), 60)
    return info.value


def test_on_a_cluster_exit_code_3_alone_is_not_oom(cluster: object, tmp_path: Path) -> None:
    error = _fail_on_cluster(cluster, tmp_path, "kts_fault_workloads:exit3")
    assert error.oom is False
    assert "exited with code 3" in error.what
    assert "out of memory" not in error.what.lower()


def test_on_a_cluster_the_workers_oom_event_and_an_empty_message(
    cluster: object, tmp_path: Path
) -> None:
    error = _fail_on_cluster(cluster, tmp_path, "kts_test_workloads:oom")
    assert error.oom is True
    assert "the worker reported OutOfMemoryError: CUDA out of memory." in error.what
    assert "CUDA ran out of memory" in error.what
    error = _fail_on_cluster(cluster, tmp_path, "kts_fault_workloads:empty_memory_error")
    assert error.oom is False
    assert "the worker reported MemoryError." in error.what
