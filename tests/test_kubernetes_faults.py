"""The Kubernetes backend when the API server freezes, dies, or answers 429/500/503 mid-run.

The fake cluster runs in this process, so a :class:`FaultProxy` in front of it stands in for
``kill -STOP`` (frozen: connections accepted, nothing answered) and for a killed server
(refused). Deadlines are shrunk so that each test takes seconds: what is asserted is the
mechanism (one line naming the API server and the call in flight, bounded attempts, the
``kubectl delete`` command for what was left), not a speed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")
pytest.importorskip("kmock")

from pytest_kts import signals
from pytest_kts.backends import kubernetes as kb
from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.kubernetes import settings as knobs
from pytest_kts.errors import ClusterError
from tests.fake_cluster import FakeCluster, PodBehaviour
from tests.fake_cluster.faults import FaultProxy
from tests.test_kubernetes_backend import _new_threads, make_settings

A = TenantSpec("a", "fft", 64)
B = TenantSpec("b", "matmul", 64)
TIMEOUT = 60.0  # the phase's --kts-timeout: every failure below must come well before it


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "CONNECT_TIMEOUT_S": 1.0,
        "REQUEST_TIMEOUT_S": 1.0,
        "MIN_REQUEST_TIMEOUT_S": 0.5,
        "API_ATTEMPTS": 3,
        "API_BACKOFF_S": 0.05,
        "API_BACKOFF_MAX_S": 0.2,
        "WATCH_SLACK_S": 1.0,
        "LOG_IDLE_TIMEOUT_S": 1.0,
        "DELETE_BUDGET_S": 2.0,
        "START_LEAD_DEFAULT_S": 1.0,
        "START_LEAD_MARGIN_S": 0.3,
    }.items():
        monkeypatch.setattr(knobs, name, value)


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    before = set(threading.enumerate())
    fake = FakeCluster().start()
    try:
        yield fake
    finally:
        fake.stop()
        assert fake.live_processes() == [], "container processes outlived the fake cluster"
        assert _new_threads(before) == [], "threads outlived the test"


@pytest.fixture
def proxy(cluster: FakeCluster) -> Iterator[FaultProxy]:
    with FaultProxy(cluster.url) as relay:
        yield relay


def _proxied_kubeconfig(cluster: FakeCluster, proxy: FaultProxy, tmp_path: Path) -> Path:
    folder = tmp_path / "via-proxy"
    folder.mkdir()
    return cluster.write_kubeconfig(folder, url=proxy.url)


def _when_running(cluster: FakeCluster, then: object) -> threading.Thread:
    def wait() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(p.get("status", {}).get("phase") == "Running" for p in cluster.pods()):
                break
            time.sleep(0.05)
        time.sleep(0.3)  # mid-phase: the watch and the log streams are open
        then()  # type: ignore[operator]

    helper = threading.Thread(target=wait)
    helper.start()
    return helper


def _run_until_fault(
    backend: kb.KubernetesBackend, cluster: FakeCluster, fault: object
) -> tuple[ClusterError, list[warnings.WarningMessage], float]:
    """Run a phase, inject ``fault`` mid-phase; the error, close()'s warnings, the time taken."""
    helper = _when_running(cluster, fault)
    started = time.monotonic()
    try:
        with pytest.raises(ClusterError) as info:
            backend.run_phase(PhasePlan("solo", 0, {"a": 10_000}), TIMEOUT)
    finally:
        helper.join()
    took = time.monotonic() - started
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend.close()  # the server is still gone: bounded, and says what it left
    return info.value, caught, took


def test_a_frozen_api_server_fails_the_phase_with_one_line_and_prints_the_cleanup(
    cluster: FakeCluster, proxy: FaultProxy, tmp_path: Path
) -> None:
    cluster.script(PodBehaviour(hang_after_lines=3), tenant="a")  # runs until stopped
    settings = make_settings(
        cluster, tmp_path, kubeconfig=str(_proxied_kubeconfig(cluster, proxy, tmp_path))
    )
    backend = kb.KubernetesBackend(settings)
    backend.start([A], "cpu")
    error, caught, took = _run_until_fault(backend, cluster, proxy.freeze)
    message = str(error)
    assert "\n" not in message
    assert f"API server at {proxy.url} stopped answering while trying to" in message
    assert "no answer (read timed out)" in message and "attempts over" in message
    assert took < TIMEOUT  # bounded by the attempts, not by the phase's timeout
    assert proxy.held > 0  # the relay really held requests back
    # The Job could not be deleted: its exact kubectl command is printed.
    jobs = [j["metadata"]["name"] for j in cluster.jobs()]
    assert jobs and backend.left_behind == jobs
    texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any(f"kubectl delete jobs -n kts --cascade=background {jobs[0]}" in t for t in texts)
    proxy.thaw()


def test_a_killed_api_server_fails_the_phase_with_one_line(
    cluster: FakeCluster, proxy: FaultProxy, tmp_path: Path
) -> None:
    cluster.script(PodBehaviour(hang_after_lines=3), tenant="a")
    settings = make_settings(
        cluster, tmp_path, kubeconfig=str(_proxied_kubeconfig(cluster, proxy, tmp_path))
    )
    backend = kb.KubernetesBackend(settings)
    backend.start([A], "cpu")
    error, caught, took = _run_until_fault(backend, cluster, proxy.kill)
    message = str(error)
    assert "\n" not in message
    assert f"API server at {proxy.url} stopped answering" in message
    assert "refused" in message.lower() or "reset" in message.lower()
    assert took < TIMEOUT
    jobs = [j["metadata"]["name"] for j in cluster.jobs()]
    assert backend.left_behind == jobs
    assert any("kubectl delete jobs" in str(w.message) for w in caught)


def test_429s_and_500s_are_retried_with_backoff(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.fail_requests(429, 2, verb="create", resource="jobs")
    cluster.fail_requests(500, 2, verb="list", resource="jobs")
    cluster.fail_requests(503, 1, verb="list", resource="pods")
    with kb.KubernetesBackend(settings) as backend:
        backend.start([A, B], "cpu")
        out = backend.run_phase(PhasePlan("solo", 0, {"a": 5}), TIMEOUT)
        assert len(out.readers["a"].samples) == 5
        assert backend.facts()["api_failures"] >= 5
    assert cluster.faults_served == 5
    assert cluster.jobs() == []


def test_an_api_server_that_keeps_answering_503_gives_up_after_the_attempts(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    cluster.fail_requests(503, 10_000, verb="create", resource="jobs")
    backend = kb.KubernetesBackend(settings)
    backend.start([A], "cpu")
    with pytest.raises(ClusterError) as info:
        backend.run_phase(PhasePlan("solo", 0, {"a": 5}), TIMEOUT)
    message = str(info.value)
    assert "\n" not in message
    assert f"API server at {cluster.url}" in message
    assert "create Job" in message and "answered 503" in message
    assert f"({knobs.API_ATTEMPTS} attempts over" in message
    assert cluster.faults_served == knobs.API_ATTEMPTS
    backend.close()


@pytest.fixture
def settings(cluster: FakeCluster, tmp_path: Path) -> kb.ClusterSettings:
    return make_settings(cluster, tmp_path)


def test_sigterm_mid_phase_deletes_the_jobs(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.script(PodBehaviour(hang_after_lines=3))
    backend = kb.KubernetesBackend(make_settings(cluster, tmp_path))
    backend.start([A, B], "cpu")
    restore = signals.install()  # as the plugin and `kts` do
    try:
        helper = _when_running(cluster, lambda: os.kill(os.getpid(), signal.SIGTERM))
        try:
            with pytest.raises(signals.Terminated):
                backend.run_phase(PhasePlan("shared", 0, {"a": 10_000, "b": 10_000}), TIMEOUT)
        finally:
            helper.join()
    finally:
        restore()
    assert len(cluster.created_jobs()) == 2
    assert cluster.jobs() == [] and cluster.pods() == []  # without close()
    assert _wait_for_no_processes(cluster)
    backend.close()


def _wait_for_no_processes(cluster: FakeCluster) -> bool:
    deadline = time.monotonic() + 5
    while cluster.live_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cluster.live_processes() == []


def test_ctrl_c_while_the_api_server_is_frozen_prints_what_it_left(
    cluster: FakeCluster, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(knobs, "DELETE_BUDGET_S", 10.0)  # room for every attempt per Job
    cluster.script(PodBehaviour(hang_after_lines=3))
    settings = make_settings(
        cluster, tmp_path, kubeconfig=str(_proxied_kubeconfig(cluster, proxy, tmp_path))
    )
    backend = kb.KubernetesBackend(settings)
    backend.start([A, B], "cpu")

    def freeze_then_interrupt() -> None:
        proxy.freeze()
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    helper = _when_running(cluster, freeze_then_interrupt)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(KeyboardInterrupt):
                backend.run_phase(PhasePlan("shared", 0, {"a": 10_000, "b": 10_000}), TIMEOUT)
    finally:
        helper.join()
    jobs = sorted(j["metadata"]["name"] for j in cluster.jobs())
    assert len(jobs) == 2 and sorted(backend.left_behind) == jobs
    texts = [str(w.message) for w in caught]
    assert any(
        f"kubectl delete jobs -n kts --cascade=background {' '.join(jobs)}" in t for t in texts
    )
    # close() does not make the user wait the whole budget again: one short try per Job.
    failures = backend.facts()["api_failures"]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        backend.close()
    assert backend.facts()["api_failures"] - failures <= len(jobs) < knobs.API_ATTEMPTS
    proxy.thaw()


def test_retry_after_is_honoured_and_capped() -> None:
    from types import SimpleNamespace

    from pytest_kts.backends.kubernetes.client import _retry_after

    assert _retry_after(SimpleNamespace(headers={"Retry-After": "0.1"}), 9.0) == 0.1
    capped = _retry_after(SimpleNamespace(headers={"Retry-After": "3600"}), 0.5)
    assert capped == knobs.API_BACKOFF_MAX_S
    assert _retry_after(SimpleNamespace(headers={"Retry-After": "soon"}), 0.5) == 0.5
    assert _retry_after(SimpleNamespace(headers=None), 0.5) == 0.5


# --------------------------------------------------------------------------- typed answers


def test_api_statuses_map_to_error_classes_as_kopf_does() -> None:
    from pytest_kts.backends.kubernetes.errors import error_class

    assert error_class(404) is kb.ApiNotFound and error_class(410) is kb.ApiGone
    assert error_class(400) is kb.ApiBadRequest and error_class(409) is kb.ApiConflict
    assert error_class(418) is kb.ApiClientError  # a 4xx of its own: the family's class
    assert error_class(507) is kb.ApiServerError
    assert issubclass(kb.ApiForbidden, kb.ApiClientError)
    assert issubclass(kb.ApiClientError, ClusterError)
    assert issubclass(kb.ApiServerError, kb.ApiError)


def test_the_client_raises_the_class_of_the_status_with_one_line(
    cluster: FakeCluster, settings: kb.ClusterSettings
) -> None:
    """Callers catch ``ApiNotFound`` or ``ApiConflict``; nobody matches on status codes."""
    client = kb.Client(kb.connect(settings), settings)
    try:
        with pytest.raises(kb.ApiNotFound) as missing:
            client.call(client.batch.read_namespaced_job, "nope", "kts", doing="read Job nope")
        assert missing.value.status == 404 and "nope" in missing.value.message
        assert "while trying to read Job nope" in str(missing.value)
        job = kb.render_job(
            settings, A, device="cpu", name="kts-typed-001-solo-a", phase="solo", round=0,
            iterations=1,
        )  # fmt: skip
        client.call(client.batch.create_namespaced_job, "kts", job, doing="create Job")
        with pytest.raises(kb.ApiConflict) as again:
            client.call(client.batch.create_namespaced_job, "kts", job, doing="create Job")
        assert again.value.status == 409 and again.value.reason == "Conflict"
        broken = {**job, "metadata": {**job["metadata"], "name": "Not_A_Name"}}
        with pytest.raises(kb.ApiUnprocessable):
            client.call(client.batch.create_namespaced_job, "kts", broken, doing="create Job")
        cluster.fail_requests(403, 1, verb="list", resource="jobs")
        with pytest.raises(kb.ApiForbidden) as forbidden:
            client.call(client.batch.list_namespaced_job, "kts", doing="list Jobs")
        assert "\n" not in str(forbidden.value) and "rbac.yaml" in str(forbidden.value)
        client.call(
            client.batch.delete_namespaced_job, "kts-typed-001-solo-a", "kts",
            propagation_policy="Background", doing="delete Job",
        )  # fmt: skip
    finally:
        client.close()
