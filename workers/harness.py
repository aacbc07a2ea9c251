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

from pytest_kts.protocol import Sample, format_event, format_meta, format_sample

_FLUSH_EVERY_LINES = 64
_FLUSH_EVERY_NS = 200_000_000


@dataclass
class Clock:
    """Times one call of ``step``; CUDA events where a GPU is in use."""

    cuda: bool

    def __post_init__(self) -> None:
        if self.cuda:
            import torch

            self._torch = torch
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def time(self, step: Callable[[], object], intended_ns: int) -> tuple[int, float, float]:
        """Run ``step``; return (end monotonic ns, host ms from ``intended_ns``, device ms)."""
        if self.cuda:
            self._start.record()
            step()
            self._end.record()
            self._end.synchronize()
            end = time.perf_counter_ns()
            return end, (end - intended_ns) / 1e6, self._start.elapsed_time(self._end)
        step()
        end = time.perf_counter_ns()
        return end, (end - intended_ns) / 1e6, math.nan


class Emitter:
    """Buffers protocol lines and writes them in chunks."""

    def __init__(self, stream: IO[str], tenant: str) -> None:
        self.stream = stream
        self.tenant = tenant
        self._buffer: list[str] = []
        self._last_flush = time.perf_counter_ns()
        self._lock = threading.Lock()

    def sample(self, s: Sample) -> None:
        self._buffer.append(format_sample(s))
        if (
            len(self._buffer) >= _FLUSH_EVERY_LINES
            or time.perf_counter_ns() - self._last_flush > _FLUSH_EVERY_NS
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
            self._last_flush = time.perf_counter_ns()


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
    return facts


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
    keep_running: threading.Event | None = None,
    min_duration_s: float = 0.0,
) -> int:
    """Run one phase and emit a sample per iteration; return how many were recorded.

    ``start_at_ns`` (epoch) is a barrier by the clock: co-tenants given the same instant start
    together. With ``keep_running`` set, the loop goes on past ``iterations`` (announcing
    ``target_reached``) until the event is cleared, so a co-tenant still measuring keeps its
    contention; ``min_duration_s`` does the same by time, for backends with no control channel.
    """
    if start_at_ns is not None:
        delay = (start_at_ns - time.time_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
    emit.event("phase_start", {"phase": phase, "round": round, "iterations": iterations})
    # Epoch and monotonic clocks are read once; per-iteration stamps derive from the monotonic one.
    epoch0, mono0 = time.time_ns(), time.perf_counter_ns()
    deadline = mono0 + int(min_duration_s * 1e9)
    open_loop = arrival.kind != "closed"
    next_gap = arrival.gaps() if open_loop else None
    intended = mono0
    i = 0
    announced = False
    while True:
        if i >= iterations:
            if not announced:
                emit.event("target_reached", {"phase": phase, "round": round, "n": i})
                announced = True
            more_by_event = keep_running is not None and keep_running.is_set()
            more_by_time = time.perf_counter_ns() < deadline
            if not (more_by_event or more_by_time):
                break
        if open_loop:
            now = time.perf_counter_ns()
            if intended > now:
                time.sleep((intended - now) / 1e9)
        else:
            intended = time.perf_counter_ns()
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
            time.sleep(arrival.sleep_s)
    emit.event("phase_end", {"phase": phase, "round": round, "n": i})
    emit.flush()
    return i
