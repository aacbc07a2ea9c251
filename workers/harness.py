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
        delay = (start_at_ns - time.time_ns()) / 1e9
        if delay > 0:
            control.sleep(delay)
    emit.event("phase_start", {"phase": phase, "round": round, "iterations": iterations})
    # Epoch and monotonic clocks are read once; per-iteration stamps derive from the monotonic one.
    epoch0, mono0 = time.time_ns(), time.perf_counter_ns()
    keep_until = mono0 + int(min_duration_s * 1e9)
    cut_at = None if max_duration_s is None else mono0 + int(max_duration_s * 1e9)
    open_loop = arrival.kind != "closed"
    next_gap = arrival.gaps() if open_loop else None
    intended = mono0
    i = 0
    announced = False
    while not control.stopped(seq):
        now = time.perf_counter_ns()
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
            control.sleep(arrival.sleep_s)
    emit.event("phase_end", {"phase": phase, "round": round, "n": i})
    emit.flush()
    return i
