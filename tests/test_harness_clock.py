"""The device clock's timing modes, on the CPU: plan, fallbacks and the order of operations.

A fake ``torch`` records what the Clock asks of the GPU, so the order that makes the event
pair hold only the work (gate held, start, step, end, gate released) is checked here; what
the modes measure on a GPU is benchmarks/launch_gap.py's job.
"""

from __future__ import annotations

import math
import sys
import types
from contextlib import contextmanager

import pytest

from pytest_kts.workers import harness
from pytest_kts.workers.harness import Clock, requested_timing, timing_plan


class FakeTorch:
    def __init__(self, log: list[str], capture_fails: bool = False) -> None:
        cuda = types.SimpleNamespace()
        self.cuda = cuda
        self.log = log

        class Event:
            def __init__(self, enable_timing: bool) -> None:
                self.name = f"event{len([x for x in log if x == 'new event'])}"
                log.append("new event")

            def record(self) -> None:
                log.append(f"record {'start' if self.name == 'event0' else 'end'}")

            def synchronize(self) -> None:
                log.append("sync")

            def elapsed_time(self, other: object) -> float:
                return 0.25

        class Graph:
            def replay(self) -> None:
                log.append("replay")

        @contextmanager
        def graph(g: Graph, capture_error_mode: str = "global"):
            log.append(f"capture mode {capture_error_mode}")
            if capture_fails:
                raise RuntimeError("operation not permitted when stream is capturing")
            log.append("capture begin")
            yield
            log.append("capture end")

        class Stream:
            def wait_stream(self, other: object) -> None:
                pass

        @contextmanager
        def stream(s: object):
            yield

        cuda.Event = Event
        cuda.CUDAGraph = Graph
        cuda.graph = graph
        cuda.Stream = Stream
        cuda.stream = stream
        cuda.current_stream = lambda: Stream()
        cuda.synchronize = lambda: log.append("device sync")


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []
    monkeypatch.setitem(sys.modules, "torch", FakeTorch(out))
    return out


def step_into(log: list[str], safe: bool = False):
    def step() -> None:
        log.append("step")

    if safe:
        step.kts_graph_safe = True  # type: ignore[attr-defined]
    return step


def fake_gate(log: list[str]) -> type:
    class FakeGate:
        def __init__(self, torch: object) -> None:
            self.count = 0

        def hold(self) -> None:
            self.count += 1
            log.append("hold")

        def release(self) -> None:
            log.append("release")

    return FakeGate


def test_requested_timing_from_the_environment() -> None:
    assert requested_timing({}) == "auto"
    assert requested_timing({"KTS_DEVICE_TIMING": " Gated "}) == "gated"
    with pytest.raises(ValueError, match="KTS_DEVICE_TIMING='fast'"):
        requested_timing({"KTS_DEVICE_TIMING": "fast"})


@pytest.mark.parametrize(
    ("requested", "cuda", "safe", "plan"),
    [
        ("auto", True, True, ["graph", "eager"]),
        ("auto", True, False, ["eager"]),  # a step with host-side state is never replayed
        ("graph", True, False, ["graph", "eager"]),  # asked for by name: tried anyway
        ("gated", True, True, ["gated", "eager"]),
        ("eager", True, True, ["eager"]),
        ("auto", False, True, ["none"]),
    ],
)
def test_timing_plan(requested: str, cuda: bool, safe: bool, plan: list[str]) -> None:
    assert timing_plan(requested, cuda=cuda, graph_safe=safe) == plan


def test_cpu_clock_has_no_device_time() -> None:
    clock = Clock(cuda=False)
    assert clock.facts() == {"device_timing": "none"}
    end, host_ms, device_ms = clock.time(lambda: None, 0)
    assert end > 0 and host_ms >= 0 and math.isnan(device_ms)


def test_graph_replays_between_the_events_and_never_reruns_the_step(
    log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "HostGate", fake_gate(log))
    step = step_into(log, safe=True)
    clock = Clock(cuda=True, step=step, timing="auto")
    # By default the replay is not gated, even where the driver could (a held stream keeps
    # its context runnable and changes how co-tenants time-slice), and the clock says so.
    facts = clock.facts()
    assert facts["device_timing"] == "graph" and facts["graph_gated"] is False
    # Three warmup calls on a side stream, then one captured call.
    assert log.count("step") == 4 and "capture begin" in log
    assert "capture mode thread_local" in log  # co-tenant threads may launch meanwhile
    log.clear()
    for _ in range(3):
        _, _, device_ms = clock.time(step, 0)
        assert device_ms == 0.25
    assert log == ["record start", "replay", "record end", "sync"] * 3


def test_graph_replay_is_gated_where_asked_and_the_driver_allows(
    log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "HostGate", fake_gate(log))
    monkeypatch.setenv(harness.GRAPH_GATE_ENV, "1")
    step = step_into(log, safe=True)
    clock = Clock(cuda=True, step=step, timing="auto")
    assert clock.facts() == {"device_timing": "graph", "graph_gated": True}
    log.clear()
    clock.time(step, 0)
    # Not even the graph's own launch falls between the events.
    assert log == ["hold", "record start", "replay", "record end", "release", "sync"]


def test_failed_capture_falls_back_to_eager_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setitem(sys.modules, "torch", FakeTorch(log, capture_fails=True))
    step = step_into(log, safe=True)
    clock = Clock(cuda=True, timing="auto")
    assert clock.facts()["device_timing"] == "pending (auto)"
    clock.time(step, 0)  # settles on the first call (a warmup iteration in the workers)
    facts = clock.facts()
    assert facts["device_timing"] == "eager"
    assert "graph not used: RuntimeError" in facts["device_timing_notes"][0]
    log.clear()
    clock.time(step, 0)
    assert log == ["record start", "step", "record end", "sync"]


def test_gate_holds_the_stream_until_the_whole_step_is_queued(
    log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "HostGate", fake_gate(log))
    step = step_into(log)
    clock = Clock(cuda=True, step=step, timing="gated")
    assert clock.facts() == {"device_timing": "gated"}
    log.clear()
    clock.time(step, 0)
    # The start event is queued behind the hold, so it fires only when the host releases the
    # stream, after every kernel of the step was issued: the pair holds the work alone.
    assert log == ["hold", "record start", "step", "record end", "release", "sync"]


def test_gate_without_a_driver_falls_back_to_eager(log: list[str]) -> None:
    # No libcuda on this machine: the gate cannot be built, and the clock says so.
    step = step_into(log)
    clock = Clock(cuda=True, step=step, timing="gated")
    facts = clock.facts()
    assert facts["device_timing"] == "eager"
    assert facts["device_timing_notes"][0].startswith("gated not used: ")


def test_builtin_steps_are_marked_graph_safe() -> None:
    torch = pytest.importorskip("torch")
    from pytest_kts.workers.workloads import build_fft, build_matmul

    cpu = torch.device("cpu")
    assert build_fft(cpu, 8, 0).kts_graph_safe
    assert build_matmul(cpu, 8, 0).kts_graph_safe


def test_launch_gap_benchmark_runs_its_cpu_path(tmp_path) -> None:
    import json
    from pathlib import Path

    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import launch_gap
    finally:
        sys.path.pop(0)
    assert launch_gap.main([str(tmp_path), "--quick", "--iterations", "30"]) == 0
    report = json.loads((tmp_path / "launch_gap.json").read_text())
    assert report["note"].startswith("no CUDA device")
    assert [e["op"] for e in report["results"]] == ["fft 64", "matmul 64"]
    assert report["results"][0]["modes"]["eager"]["timing_used"] == {"device_timing": "none"}
    assert "| fft 64 |" in (tmp_path / "launch_gap.md").read_text()
