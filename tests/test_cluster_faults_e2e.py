"""`pytest --kts-cluster` as a user runs it, against the fake cluster, when things go wrong:
the API server freezes mid-phase, or pytest gets SIGTERM. The fake cluster runs in this
process; pytest runs in a subprocess and reaches it through a :class:`FaultProxy`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")
pytest.importorskip("kmock")

from pytest_kts import signals
from tests.fake_cluster import FakeCluster
from tests.fake_cluster.faults import FaultProxy
from tests.test_kubernetes_backend import _new_threads

ROOT = Path(__file__).resolve().parents[1]
KTS_TIMEOUT = 60

SCENARIO = """
import pytest

@pytest.mark.kts(iterations=1_000_000, round_iterations=1_000_000)
def test_long(kts):
    kts.tenant("fft", size=16, sleep_ms=5, warmup=1)
    kts.tenant("matmul", size=16, sleep_ms=5, warmup=1)
    kts.run()
"""


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    before = set(threading.enumerate())
    fake = FakeCluster().start()
    try:
        yield fake
    finally:
        fake.stop()
        assert fake.live_processes() == []
        assert _new_threads(before) == []


@pytest.fixture
def proxy(cluster: FakeCluster) -> Iterator[FaultProxy]:
    with FaultProxy(cluster.url) as relay:
        yield relay


def _pytest(cluster: FakeCluster, proxy: FaultProxy, tmp_path: Path) -> subprocess.Popen[str]:
    (tmp_path / "test_long.py").write_text(SCENARIO)
    config = tmp_path / "kube"
    config.mkdir()
    kubeconfig = cluster.write_kubeconfig(config, url=proxy.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.Popen(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--kts-cluster",
            "--kts-device", "cpu", "--kts-kubeconfig", str(kubeconfig),
            "--kts-timeout", str(KTS_TIMEOUT), "test_long.py",
        ],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_running(cluster: FakeCluster, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any(p.get("status", {}).get("phase") == "Running" for p in cluster.pods()):
            time.sleep(1.0)  # mid-phase
            return
        time.sleep(0.1)
    out = process.communicate(timeout=30)[0] if process.poll() is None else process.stdout.read()  # type: ignore[union-attr]
    pytest.fail(f"no pod ran:\n{out[-3000:]}")


def test_a_frozen_api_server_fails_the_test_within_the_timeout(
    cluster: FakeCluster, proxy: FaultProxy, tmp_path: Path
) -> None:
    process = _pytest(cluster, proxy, tmp_path)
    _wait_running(cluster, process)
    proxy.freeze()
    frozen_at = time.monotonic()
    try:
        out = process.communicate(timeout=KTS_TIMEOUT + 60)[0]
    finally:
        proxy.thaw()
    took = time.monotonic() - frozen_at
    assert process.returncode == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    lines = [line for line in out.splitlines() if "stopped answering" in line]
    assert lines, out[-3000:]
    assert f"API server at {proxy.url} stopped answering while trying to" in lines[0]
    # The phase's timeout bounds the failure; the cleanup's budget (30 s) comes on top.
    assert took < KTS_TIMEOUT + 45
    jobs = [j["metadata"]["name"] for j in cluster.jobs()]
    assert jobs, "the frozen server could not have deleted them"
    assert "kubectl delete jobs -n kts --cascade=background" in out
    assert all(name in out for name in jobs)  # the command names every Job left


def test_sigterm_to_pytest_deletes_the_jobs(
    cluster: FakeCluster, proxy: FaultProxy, tmp_path: Path
) -> None:
    process = _pytest(cluster, proxy, tmp_path)
    _wait_running(cluster, process)
    assert cluster.jobs()
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=60)[0]
    assert process.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    assert signals.MESSAGE in out
    assert cluster.jobs() == [] and cluster.pods() == []
    deadline = time.monotonic() + 10
    while cluster.live_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.live_processes() == []
