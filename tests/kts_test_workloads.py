"""Workloads that misbehave on purpose, for the local backend's failure tests.

Workers import them as ``kts_test_workloads:NAME`` (the backend puts the test's working
directory and the project root on the worker's path; the tests add this folder).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch


def _counter(after: int, action: Callable[[], object]) -> Callable[[], object]:
    calls = {"n": 0}

    def step() -> object:
        calls["n"] += 1
        if calls["n"] > after:
            return action()
        return torch.zeros(4).sum()

    return step


def crash(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Raises after ``after`` calls (warmup included)."""
    after = int(params.get("after", "10"))

    def boom() -> object:
        raise RuntimeError("simulated worker crash in the tenant's step")

    return _counter(after, boom)


def hang(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    after = int(params.get("after", "10"))
    return _counter(after, lambda: time.sleep(3600))


def hang_build(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Never finishes building (a download, a lock that is never released)."""
    time.sleep(3600)
    return lambda: torch.zeros(4).sum()


def spawner(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Starts a helper process of its own (a server, a sidecar) and never stops it."""
    import subprocess

    helper = subprocess.Popen(["sleep", "300"])
    print(f"helper pid {helper.pid}", file=sys.stderr, flush=True)
    return lambda: torch.zeros(4).sum()


def oom(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    after = int(params.get("after", "10"))

    def out_of_memory() -> object:
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 80.00 GiB (simulated by the test workload)"
        )

    return _counter(after, out_of_memory)


def die(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Exits hard, as a segfaulting extension would: no error event, no traceback."""
    after = int(params.get("after", "10"))
    return _counter(after, lambda: os._exit(139))


def noisy(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Prints foreign and malformed lines into the protocol stream between iterations."""

    def step() -> object:
        print("a framework warning that is not ours", flush=True)
        print("KTS_APP,v2,broken,line", flush=True)
        return torch.zeros(4).sum()

    return step


# Tenants that leave something behind in a resident worker, and one that needs a fresh
# process's settings: what a release must catch or undo.


def leaky(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Keeps a tensor where a release cannot drop it: in another module (this one's own
    globals go with it, as the release forgets the tenant's module)."""
    torch._kts_test_kept = torch.ones(size, device=device)  # type: ignore[attr-defined]
    return lambda: torch.zeros(4).sum()


def threaded(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Leaves a thread running behind its step."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="left-behind").start()
    return lambda: torch.zeros(4).sum()


def clock_patcher(
    device: torch.device, size: int, seed: int, **params: str
) -> Callable[[], object]:
    """Replaces ``time.perf_counter_ns`` for the whole process (5 ms more per reading), as a
    profiler or a monkeypatching library would."""
    real, readings = time.perf_counter_ns, [0]

    def slow_clock() -> int:
        readings[0] += 1
        return real() + readings[0] * 5_000_000

    time.perf_counter_ns = slow_clock
    return lambda: torch.zeros(4).sum()


def meddler(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Changes torch's process-wide settings, as some model code does."""
    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float64)
    torch.set_float32_matmul_precision("medium")
    return lambda: torch.zeros(4).sum()


def expects_defaults(
    device: torch.device, size: int, seed: int, **params: str
) -> Callable[[], object]:
    """Refuses to build unless torch's settings are a fresh worker's."""
    found = (
        torch.get_num_threads(),
        torch.get_default_dtype(),
        torch.get_float32_matmul_precision(),
    )
    if found != (1, torch.float32, "highest"):
        raise ValueError(f"torch settings are not a fresh process's: {found}")
    return lambda: torch.zeros(4).sum()


def exclusive(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """One step holds an exclusive device for ``hold_ms`` (a file lock every tenant of the
    test opens: ``lock``), as a time-sliced GPU gives one context at a time. A co-tenant that
    holds it long and often delays this tenant; one that holds it rarely does not."""
    import fcntl

    hold = float(params.get("hold_ms", "0.5")) / 1e3
    handle = open(params["lock"], "a")  # noqa: SIM115 - held for the worker's life

    def step() -> object:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            until = time.perf_counter() + hold
            while time.perf_counter() < until:
                pass
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    return step
