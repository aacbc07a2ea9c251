"""Lines are bound to the worker that wrote them (issue 19 item 1).

A workload that prints protocol lines of its own making (samples in another tenant's name, an
error event claiming CUDA ran out of memory) must not change anyone's figures: the worker keeps
its workload's output off the protocol stream, and each backend reads a stream with a reader
bound to that worker's tenant (and, for a one-phase Job, its phase and round), so a record in
another name is counted as misaddressed and dropped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.local import LocalBackend
from pytest_kts.backends.streams import StreamsBackend
from pytest_kts.protocol import LineReader, Sample, format_event, format_sample

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(HERE)}
FORGED_MS = 500.0  # what the forger's fake samples claim


def _sample(tenant: str, phase: str = "shared", rnd: int = 0, i: int = 0) -> str:
    return format_sample(Sample(tenant, phase, rnd, i, 10, 20, FORGED_MS, float("nan")))


def test_a_bound_reader_keeps_only_its_own_tenants_records() -> None:
    reader = LineReader.bound("printer", "shared", 2)
    lines = [
        _sample("printer", "shared", 2, 0),
        _sample("victim", "shared", 2, 1),
        _sample("victim", "solo", 2, 2),
        _sample("printer", "solo", 2, 3),  # its own name, another phase
        _sample("printer", "shared", 5, 4),  # its own name, another round
        format_event("victim", "error", {"kind": "oom", "message": "CUDA out of memory"}),
        format_event("printer", "phase_end", {"n": 1}),
    ]
    reader.feed_all(lines)
    assert [(s.tenant, s.iteration) for s in reader.samples] == [("printer", 0)]
    assert [e.name for e in reader.events] == ["phase_end"]
    assert reader.misaddressed == 5
    assert reader.misaddressed_to == {"victim": 3, "printer": 2}
    acc = reader.accounting()
    assert acc["misaddressed"] == 5 and acc["samples"] == 1
    assert "names tenant 'victim' on the stream of 'printer'" in acc["misaddressed_examples"][0]
    merged = LineReader()
    merged.merge(reader)
    merged.merge(reader)
    assert merged.misaddressed == 10 and merged.misaddressed_to == {"victim": 6, "printer": 4}


def test_an_unbound_reader_still_reads_a_log_of_several_tenants() -> None:
    reader = LineReader().feed_all([_sample("a"), _sample("b")])
    assert [s.tenant for s in reader.samples] == ["a", "b"] and reader.misaddressed == 0


def _victims_samples_are_its_own(samples: list[Sample], phase: str, n: int) -> None:
    assert len(samples) >= n
    assert {s.tenant for s in samples} == {"victim"} and {s.phase for s in samples} == {phase}
    # The harness numbers iterations 0, 1, ... (a cluster's shared phase is trimmed to the
    # tenants' overlap, so its first may be gone): one forged line would repeat a number.
    its = [s.iteration for s in samples]
    assert its == list(range(its[0], its[0] + len(its)))
    assert max(s.host_ms for s in samples) < FORGED_MS


@pytest.mark.parametrize("kind", ["local", "streams"])
def test_a_workloads_forged_lines_reach_nobody(kind: str) -> None:
    tenants = [
        TenantSpec("victim", "fft", 16, sleep_ms=1.0, warmup=1),
        TenantSpec(
            "forger", "kts_fault_workloads:forger", 16, sleep_ms=1.0, warmup=1,
            params={"victim": "victim", "event": "1"},
        ),
    ]  # fmt: skip
    backend = StreamsBackend(env=ENV) if kind == "streams" else LocalBackend(env=ENV)
    with backend:
        backend.start(tenants, "cpu")
        solo = backend.run_phase(PhasePlan("solo", 0, {"victim": 40}), timeout_s=60)
        # The forged "CUDA out of memory" event (step 3) raises no WorkerError.
        forger_solo = backend.run_phase(PhasePlan("solo", 0, {"forger": 10}), timeout_s=60)
        shared = backend.run_phase(PhasePlan("shared", 0, {"victim": 40, "forger": 40}), 60)
        tail = backend._workers["forger"].stderr_tail()
    _victims_samples_are_its_own(solo.readers["victim"].samples, "solo", 40)
    _victims_samples_are_its_own(shared.readers["victim"].samples, "shared", 40)
    assert len(forger_solo.readers["forger"].samples) == 10
    for out in (solo, forger_solo, shared):
        for reader in out.readers.values():
            assert reader.foreign == reader.malformed == reader.misaddressed == 0
    # What it printed is in its stderr, where a failure's message would show it.
    assert "KTS_APP,v2,victim,shared,0,10" in tail


@pytest.fixture
def cluster() -> object:  # each cluster test file has its own, as the others do
    pytest.importorskip("kubernetes")
    pytest.importorskip("kmock")
    from tests.fake_cluster import FakeCluster

    fake = FakeCluster().start()
    try:
        yield fake
    finally:
        fake.stop()


def test_on_a_cluster_a_pod_log_speaks_only_for_its_tenant(cluster: object, tmp_path: Path) -> None:
    """A pod's log merges stdout and stderr, so there the printed lines do arrive: in another
    tenant's name they are counted as misaddressed, dropped, and named in the report."""
    from pytest_kts.backends import kubernetes as kb
    from pytest_kts.constants import WORKER_MODULE
    from tests.test_kubernetes_backend import make_settings

    settings = make_settings(
        cluster,  # type: ignore[arg-type]
        tmp_path,
        worker_command=("python", "-m", WORKER_MODULE),
    )
    tenants = [
        TenantSpec("victim", "fft", 16, sleep_ms=1.0, warmup=1, env=ENV),
        TenantSpec(
            "forger", "kts_fault_workloads:forger", 16, sleep_ms=1.0, warmup=1,
            params={"victim": "victim"}, env=ENV,
        ),
    ]  # fmt: skip
    with kb.KubernetesBackend(settings) as backend:
        backend.start(tenants, "cpu")
        shared = backend.run_phase(PhasePlan("shared", 0, {"victim": 30, "forger": 30}), 60)
    _victims_samples_are_its_own(shared.readers["victim"].samples, "shared", 30)
    forger = shared.readers["forger"]
    assert len(forger.samples) >= 30 and {s.tenant for s in forger.samples} == {"forger"}
    # Two lines a step: a solo one and a shared one, both in the victim's name.
    assert forger.misaddressed >= 2 * 30 and set(forger.misaddressed_to) == {"victim"}


def test_output_below_python_reaches_nobody_either() -> None:
    """os.write(1, ...), a child process's stdout, even closing descriptor 1: none of it
    touches the protocol stream, which has a descriptor of its own."""
    tenants = [
        TenantSpec("victim", "fft", 16, sleep_ms=1.0, warmup=1),
        TenantSpec("forger", "kts_fault_workloads:native_forger", 16, sleep_ms=1.0, warmup=0),
    ]
    backend = LocalBackend(env=ENV)
    with backend:
        backend.start(tenants, "cpu")
        shared = backend.run_phase(PhasePlan("shared", 0, {"victim": 30, "forger": 30}), 60)
        tail = backend._workers["forger"].stderr_tail()
    _victims_samples_are_its_own(shared.readers["victim"].samples, "shared", 30)
    assert len(shared.readers["forger"].samples) >= 30  # it kept reporting after closing fd 1
    assert all(r.foreign == r.misaddressed == 0 for r in shared.readers.values())
    assert tail.count("KTS_APP,v2,victim,shared,0,500") == 4


def test_bytes_that_are_not_utf8_and_a_huge_line_on_the_protocol_pipe_are_not_fatal() -> None:
    here = Path(__file__).resolve().parent
    backend = LocalBackend(env={"PYTHONPATH": str(here)})
    with backend:
        backend.start(
            [TenantSpec("raw", "kts_fault_workloads:raw_protocol_writer", 8, warmup=1)], "cpu"
        )
        out = backend.run_phase(PhasePlan("solo", 0, {"raw": 20}), timeout_s=60)
    reader = out.readers["raw"]
    assert len(reader.samples) == 20  # the stream went on after both
