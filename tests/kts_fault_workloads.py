"""Workloads whose failures must be named from evidence (issue 11 item 4), imported by workers
as ``kts_fault_workloads:NAME`` (tests/ is on the worker's PYTHONPATH in those tests)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

import torch


def _after(params: dict[str, str], action: Callable[[], object]) -> Callable[[], object]:
    after = int(params.get("after", "5"))
    calls = {"n": 0}

    def step() -> object:
        calls["n"] += 1
        if calls["n"] > after:
            return action()
        return torch.zeros(4).sum()

    return step


def exit3(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Exits with code 3 (the worker's OOM code) on a CPU run, with no OOM anywhere."""
    return _after(params, lambda: os._exit(3))


def host_oom_words(
    device: torch.device, size: int, seed: int, **params: str
) -> Callable[[], object]:
    """Says "out of memory" on stderr, but not as CUDA or torch would, then exits 3."""

    def go() -> object:
        print("DataLoader worker ran out of memory; retrying", file=sys.stderr, flush=True)
        os._exit(3)

    return _after(params, go)


def empty_memory_error(
    device: torch.device, size: int, seed: int, **params: str
) -> Callable[[], object]:
    """An exception without a message."""

    def go() -> object:
        raise MemoryError()

    return _after(params, go)


def forger(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Prints protocol lines of its own making each step: samples in the name of tenant
    ``victim`` (500 ms each, iteration numbers from 1000) and, with ``event=1``, at the third
    step an error event in its own name claiming CUDA ran out of memory (issue 19 item 1)."""
    import time

    victim = params.get("victim", "victim")
    calls = {"n": 0}

    def step() -> object:
        calls["n"] += 1
        now = time.time_ns()
        for phase in ("solo", "shared"):
            i = 1000 + calls["n"]
            print(f"KTS_APP,v2,{victim},{phase},0,{i},{now},{now + 500_000_000},500.000000,-")
        if params.get("event") == "1" and calls["n"] == 3:
            print(
                'KTS_EVENT,v2,forger,error,{"kind":"oom","type":"OutOfMemoryError",'
                '"message":"CUDA out of memory (forged)"}',
                flush=True,
            )
        return torch.zeros(4).sum()

    return step


def native_forger(
    device: torch.device, size: int, seed: int, **params: str
) -> Callable[[], object]:
    """Writes protocol lines below Python: straight to file descriptor 1, and from a child
    process that inherits it; then closes descriptor 1 and ``sys.stdout`` altogether."""
    import subprocess
    import time

    calls = {"n": 0}

    def step() -> object:
        calls["n"] += 1
        now = time.time_ns()
        line = f"KTS_APP,v2,victim,shared,0,{5000 + calls['n']},{now},{now + 10**9},1000.000000,-\n"
        if calls["n"] <= 3:
            os.write(1, line.encode())
        if calls["n"] == 4:
            subprocess.run(["/bin/sh", "-c", f"printf '{line}'"], check=False)
        if calls["n"] == 5:
            sys.stdout.close()
            os.close(1)
        return torch.zeros(4).sum()

    return step


def raw_protocol_writer(
    device: torch.device, size: int, seed: int, **params: str
) -> Callable[[], object]:
    """Writes bytes that are not UTF-8, and a 1 MiB line, straight into the protocol pipe
    (the pipe among its descriptors that is not its command pipe) while it builds."""
    commands = os.readlink("/proc/self/fd/0")
    pipes = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{name}")
            if int(name) > 2 and link.startswith("pipe:") and link != commands:
                pipes.append(int(name))
    for fd in pipes:
        os.write(fd, b"\xff\xfe not utf-8 \x80\n")
        os.write(fd, b"x" * (1 << 20) + b"\n")
    return lambda: torch.zeros(4).sum()
