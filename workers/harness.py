"""The timing harness every workload runs under.

Per iteration it records two clocks:

- **host latency**: wall time from the iteration's intended start (just before the launch in
  a closed loop; the scheduled arrival in an open loop) to the moment its completion was
  observed. This is the latency an agent lives with, including any wait for a time slice.
- **device latency**: a CUDA event pair around the work. The start event is stamped only when
  this context gets the GPU, so a wait for a time slice falls *outside* it: on a modern GPU
  it can miss the whole co-location effect. On the CPU there is no device clock and none is
  invented: the field stays empty.

Lines are buffered and flushed in chunks between iterations, never inside the timed region.
"""

from __future__ import annotations

import math
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from pytest_kts import sharing_env
from pytest_kts.protocol import Sample, format_event, format_meta, format_sample

_FLUSH_EVERY_LINES = 64
_FLUSH_EVERY_NS = 200_000_000

# The clocks, bound once at import: a workload that replaces ``time.perf_counter_ns`` (a
# profiler, gevent, a test double) changes its own readings, never the harness's.
_perf_counter = time.perf_counter
_perf_counter_ns = time.perf_counter_ns
_time_ns = time.time_ns


# How the device clock brackets a step (KTS_DEVICE_TIMING; docs/launch-gap.md says why):
#   graph  the step captured once in a CUDA graph and replayed: one launch, so the event pair
#          holds the work and no host dispatch. Only for steps marked ``kts_graph_safe``
#          (all their state on the device), or when asked for by name. With KTS_GRAPH_GATE=1
#          (and a driver that allows it) the replay is also queued behind a gate, so that not
#          even the graph's own launch falls inside the pair. Off by default: on an H200 a
#          stream held on a gate kept its context runnable between iterations, and an almost
#          idle co-tenant then cost the FFT's host p99 27% (DF 1.27 where eager timing saw
#          0.94), which is the co-location behaviour this tool measures, distorted.
#   gated  the stream held on a host-written flag (cuStreamWaitValue32) until the whole step is
#          queued: the exact eager step, but launch and execution no longer overlap, so the
#          host clock grows by up to the launch time. Opt-in, for device-clock studies.
#   eager  today's pair around an eager step: on an idle GPU it also times the host's launch.
#   auto   graph where the step allows it and capture works, else eager.
DEVICE_TIMINGS = ("auto", "graph", "gated", "eager")
DEVICE_TIMING_ENV = "KTS_DEVICE_TIMING"
GRAPH_GATE_ENV = "KTS_GRAPH_GATE"
# The first gated step runs under a watchdog: a step that synchronizes inside would wait on a
# stream that waits on the host, so the watchdog opens the gate and gating is given up.
_GATE_PROBE_S = 2.0
_CU_STREAM_WAIT_VALUE_GEQ = 0x0


def requested_timing(environ: dict[str, str] | None = None) -> str:
    """The device timing asked for in ``KTS_DEVICE_TIMING`` (default ``auto``)."""
    env = os.environ if environ is None else environ
    value = (env.get(DEVICE_TIMING_ENV) or "auto").strip().lower()
    if value not in DEVICE_TIMINGS:
        raise ValueError(f"{DEVICE_TIMING_ENV}={value!r}: use one of {', '.join(DEVICE_TIMINGS)}")
    return value


def timing_plan(requested: str, *, cuda: bool, graph_safe: bool) -> list[str]:
    """The timings to try, in order, for one step; the last one (eager) always works."""
    if not cuda:
        return ["none"]
    if requested == "auto":
        return ["graph", "eager"] if graph_safe else ["eager"]
    if requested == "eager":
        return ["eager"]
    return [requested, "eager"]


class HostGate:
    """A stream held by the GPU until the host writes a counter: cuStreamWaitValue32 on a
    pinned host word, via ctypes on the CUDA driver (torch exposes no such call)."""

    def __init__(self, torch: Any) -> None:
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        fn = getattr(lib, "cuStreamWaitValue32_v2", None) or lib.cuStreamWaitValue32
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint]
        fn.restype = ctypes.c_int
        self._wait_value = fn
        self._flag = torch.zeros(1, dtype=torch.int32, pin_memory=True)
        self._view = self._flag.numpy()
        self._address = self._device_pointer(lib, ctypes, self._flag.data_ptr())
        self._torch = torch
        self.count = 0

    @staticmethod
    def _device_pointer(lib: Any, ctypes: Any, host: int) -> int:
        # Under UVA the host pointer of pinned memory is its device pointer; ask the driver
        # anyway, and fall back to that where the call is missing.
        get = getattr(lib, "cuMemHostGetDevicePointer_v2", None)
        if get is None:
            return host
        out = ctypes.c_uint64(0)
        rc = get(ctypes.byref(out), ctypes.c_void_p(host), ctypes.c_uint(0))
        return int(out.value) if rc == 0 else host

    def hold(self) -> None:
        """Make the current stream wait until :meth:`release` (raises if the driver refuses)."""
        self.count += 1
        stream = self._torch.cuda.current_stream().cuda_stream
        rc = self._wait_value(stream, self._address, self.count, _CU_STREAM_WAIT_VALUE_GEQ)
        if rc != 0:
            raise RuntimeError(f"cuStreamWaitValue32 returned CUDA error {rc}")

    def release(self) -> None:
        self._view[0] = self.count


@dataclass
class Clock:
    """Times one call of ``step``; CUDA events where a GPU is in use.

    With ``step`` given, the device timing is settled at once (graph capture, gate probe) and
    :meth:`facts` says which one is used; otherwise on the first call of :meth:`time`, which
    is a warmup iteration in the workers.
    """

    cuda: bool
    step: Callable[[], object] | None = None
    timing: str | None = None  # None: from KTS_DEVICE_TIMING

    def __post_init__(self) -> None:
        self.requested = self.timing or requested_timing()
        if self.requested not in DEVICE_TIMINGS:
            raise ValueError(f"device timing must be one of {DEVICE_TIMINGS}, got {self.timing!r}")
        self.used: str | None = None if self.cuda else "none"
        self.notes: list[str] = []
        self._prepared_for: Callable[[], object] | None = None
        self._graph: Any = None
        self._gate: HostGate | None = None
        if self.cuda:
            import torch

            self._torch = torch
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            if self.step is not None:
                self.prepare(self.step)

    def facts(self) -> dict[str, Any]:
        """For KTS_META: the device timing used (or pending) and why it is not the one asked."""
        out: dict[str, Any] = {"device_timing": self.used or f"pending ({self.requested})"}
        if self.used == "graph":
            out["graph_gated"] = self._gate is not None
        if self.notes:
            out["device_timing_notes"] = list(self.notes)
        return out

    def prepare(self, step: Callable[[], object]) -> str:
        """Settle how ``step`` is timed: try each timing of the plan, keep the first that works."""
        self._prepared_for = step
        self._graph = self._gate = None
        if not self.cuda:
            return "none"
        safe = bool(getattr(step, "kts_graph_safe", False))
        for timing in timing_plan(self.requested, cuda=True, graph_safe=safe):
            try:
                if timing == "graph":
                    self._graph = self._capture(step)
                    if os.environ.get(GRAPH_GATE_ENV, "") == "1":
                        self._gate = self._replay_gate()
                elif timing == "gated":
                    self._gate = self._probe_gate(step)
            except Exception as exc:  # capture or driver refused: say so, try the next one
                self.notes.append(f"{timing} not used: {type(exc).__name__}: {exc}"[:300])
                self._torch.cuda.synchronize()
                continue
            self.used = timing
            return timing
        raise AssertionError("eager timing cannot fail")  # pragma: no cover

    def _capture(self, step: Callable[[], object]) -> Any:
        torch = self._torch
        # Warm up on a side stream (allocator, cuFFT plans, kernel choice), then record one step.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: co-tenants in other threads of this process (the streams backend)
        # keep launching while this one captures; their calls must not void the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            step()
        graph.replay()
        torch.cuda.synchronize()
        return graph

    def _replay_gate(self) -> HostGate | None:
        """A gate for graph replays, or None (and a note) where the driver has none."""
        try:
            gate = HostGate(self._torch)
            gate.hold()
            gate.release()
            self._torch.cuda.synchronize()
        except Exception as exc:
            self.notes.append(f"graph replay not gated: {type(exc).__name__}: {exc}"[:300])
            return None
        return gate

    def _probe_gate(self, step: Callable[[], object]) -> HostGate:
        gate = HostGate(self._torch)
        watchdog = threading.Timer(_GATE_PROBE_S, gate.release)
        gate.hold()
        watchdog.start()
        started = _perf_counter()
        try:
            step()
        finally:
            watchdog.cancel()
            gate.release()
        self._torch.cuda.synchronize()
        if _perf_counter() - started >= _GATE_PROBE_S:
            raise RuntimeError("the step synchronizes inside: a held stream would deadlock it")
        return gate

    def time(self, step: Callable[[], object], intended_ns: int) -> tuple[int, float, float]:
        """Run ``step``; return (end monotonic ns, host ms from ``intended_ns``, device ms)."""
        if step is not self._prepared_for:
            self.prepare(step)
            # Capture and probing are set-up, not the iteration: time from here.
            intended_ns = max(intended_ns, _perf_counter_ns())
        if not self.cuda:
            step()
            end = _perf_counter_ns()
            return end, (end - intended_ns) / 1e6, math.nan
        gate = self._gate
        if gate is not None:
            gate.hold()
        try:
            self._start.record()
            if self._graph is not None:
                self._graph.replay()
            else:
                step()
            self._end.record()
        finally:
            # Whatever happened, never leave the stream held: a later sync would hang.
            if gate is not None:
                gate.release()
        self._end.synchronize()
        end = _perf_counter_ns()
        return end, (end - intended_ns) / 1e6, self._start.elapsed_time(self._end)


class Emitter:
    """Buffers protocol lines and writes them in chunks."""

    def __init__(self, stream: IO[str], tenant: str) -> None:
        self.stream = stream
        self.tenant = tenant
        self._buffer: list[str] = []
        self._last_flush = _perf_counter_ns()
        self._lock = threading.Lock()

    def sample(self, s: Sample) -> None:
        self._buffer.append(format_sample(s))
        if (
            len(self._buffer) >= _FLUSH_EVERY_LINES
            or _perf_counter_ns() - self._last_flush > _FLUSH_EVERY_NS
        ):
            self.flush()

    def meta(self, facts: dict[str, Any]) -> None:
        self._write(format_meta(self.tenant, facts))

    def event(self, name: str, data: dict[str, Any] | None = None) -> None:
        self._write(format_event(self.tenant, name, data))

    def _write(self, line: str) -> None:
        self._buffer.append(line)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                self.stream.write("\n".join(self._buffer) + "\n")
                self._buffer.clear()
            self.stream.flush()
            self._last_flush = _perf_counter_ns()


@dataclass(frozen=True)
class Arrival:
    """When iterations are due: a closed loop with sleeps, or an open loop at a rate."""

    kind: str = "closed"  # closed | constant | poisson
    sleep_s: float = 0.0
    rate_hz: float | None = None
    seed: int = 0

    def gaps(self) -> Callable[[], float]:
        """Seconds from one intended start to the next (open loop only)."""
        if self.kind == "constant":
            period = 1.0 / float(self.rate_hz or 0)
            return lambda: period
        if self.kind == "poisson":
            rng = random.Random(self.seed)
            rate = float(self.rate_hz or 0)
            return lambda: rng.expovariate(rate)
        raise ValueError(f"no gaps for a {self.kind} loop")


def machine_facts(device: str) -> dict[str, Any]:
    """What this worker ran on, printed once as KTS_META."""
    import torch

    facts: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "clock": "host+device" if device == "cuda" else "host",
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        uuid = getattr(props, "uuid", None)
        facts.update(
            gpu_name=props.name,
            gpu_uuid=f"GPU-{uuid}" if uuid is not None else None,
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            mps_pipe=os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
        )
    else:
        facts.update(cpu_threads=torch.get_num_threads())
    # Read here, in the tenant's own process (its pod on a cluster): HAMi's and MPS's settings
    # are in this environment, and the GPU is the one this process got.
    facts["sharing_env"] = sharing_env.read(device=device, gpu=facts.get("gpu_uuid"))
    return facts


class PhaseControl:
    """Stops a phase from outside its loop: the backend's ``stop`` line, or the end of stdin.

    Phases are numbered (``seq``) so that a ``stop`` meant for one phase can never end the
    next one, whatever the order in which the reader thread and the loop see them. Sleeps
    between iterations wait on the control, so a stop ends a sleeping tenant at once (a
    tenant with a one-second period must not hold a phase, or Ctrl-C, for a second).
    """

    _ALL = 1 << 62

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = -1
        self._current = 0
        self._wake = threading.Event()

    def begin(self, seq: int) -> None:
        """Phase ``seq`` starts: a stop seen for an earlier phase no longer counts."""
        with self._lock:
            self._current = seq
            if self._stopped < seq:
                self._wake.clear()

    def stop(self, seq: int | None = None) -> None:
        """Stop phase ``seq`` (the running one when ``None``) at its next iteration."""
        with self._lock:
            self._stopped = max(self._stopped, self._current if seq is None else int(seq))
            if self._stopped >= self._current:
                self._wake.set()

    def close(self) -> None:
        """No more phases: the backend has gone (end of stdin) or asked the worker to exit."""
        with self._lock:
            self._stopped = self._ALL
            self._wake.set()

    def stopped(self, seq: int) -> bool:
        return self._stopped >= seq

    def sleep(self, seconds: float) -> None:
        """Sleep, or less when a stop arrives."""
        if seconds > 0:
            self._wake.wait(seconds)


def run_phase(
    step: Callable[[], object],
    *,
    clock: Clock,
    emit: Emitter,
    tenant: str,
    phase: str,
    round: int,
    iterations: int,
    arrival: Arrival,
    start_at_ns: int | None = None,
    control: PhaseControl | None = None,
    seq: int = 0,
    until_stopped: bool = False,
    min_duration_s: float = 0.0,
    max_duration_s: float | None = None,
) -> int:
    """Run one phase and emit a sample per iteration; return how many were recorded.

    ``start_at_ns`` (epoch) is a barrier by the clock: co-tenants given the same instant start
    together. The loop ends after ``iterations`` samples (announcing ``target_reached``), unless
    ``until_stopped``: then it goes on until ``control`` stops phase ``seq``, so a co-tenant
    keeps its contention up for as long as the phase lasts. A stop always ends the loop at the
    next iteration, below the target too (the phase's time share ran out; the samples so far
    are kept). ``min_duration_s`` and ``max_duration_s`` do the same by time, for backends with
    no control channel (a Kubernetes Job).
    """
    control = control or PhaseControl()
    if start_at_ns is not None:
        delay = (start_at_ns - _time_ns()) / 1e9
        if delay > 0:
            control.sleep(delay)
    emit.event("phase_start", {"phase": phase, "round": round, "iterations": iterations})
    # Epoch and monotonic clocks are read once; per-iteration stamps derive from the monotonic one.
    epoch0, mono0 = _time_ns(), _perf_counter_ns()
    keep_until = mono0 + int(min_duration_s * 1e9)
    cut_at = None if max_duration_s is None else mono0 + int(max_duration_s * 1e9)
    open_loop = arrival.kind != "closed"
    next_gap = arrival.gaps() if open_loop else None
    intended = mono0
    i = 0
    announced = False
    while not control.stopped(seq):
        now = _perf_counter_ns()
        if cut_at is not None and now >= cut_at:
            break
        if i >= iterations:
            if not announced:
                emit.event("target_reached", {"phase": phase, "round": round, "n": i})
                announced = True
            if not (until_stopped or now < keep_until):
                break
        if open_loop:
            if intended > now:
                control.sleep((intended - now) / 1e9)
                if control.stopped(seq):
                    break
        else:
            intended = _perf_counter_ns()
        end, host_ms, device_ms = clock.time(step, intended)
        emit.sample(
            Sample(
                tenant=tenant,
                phase=phase,
                round=round,
                iteration=i,
                start_ns=epoch0 + (intended - mono0),
                end_ns=epoch0 + (end - mono0),
                host_ms=host_ms,
                device_ms=device_ms,
            )
        )
        i += 1
        if open_loop:
            assert next_gap is not None
            intended += int(next_gap() * 1e9)
        elif arrival.sleep_s > 0:
            control.sleep(arrival.sleep_s)
    emit.event("phase_end", {"phase": phase, "round": round, "n": i})
    emit.flush()
    return i
