"""Every tenant in ONE process, each on its own CUDA stream.

``python -m pytest_kts.workers.streams``.

One file on purpose: it is one program (the process, its tenant threads, their shared output
and the command loop), the streams counterpart of ``run.py``; its parts share the process's
state and are not used apart.

The "streams" sharing mode. Tenants are Python threads of one interpreter; on a GPU each
thread launches its work on its own ``torch.cuda.Stream`` with the tenant's priority (lower
number = higher priority). Stream priorities only act between streams of one CUDA context:
the notes found that priority streams in *separate* processes changed nothing, so this is the
only way to ask the hardware to favour one tenant's kernels over another's.

    python -m pytest_kts.workers.streams --serve --device auto|cuda|cpu [--switch-interval-ms MS] \\
        --tenant-json '{"name": "fft", "workload": "fft", "size": 4096, "priority": -3}' \\
        --tenant-json '{"name": "gemm", "workload": "matmul", "size": 4096}'

``--tenant-json`` takes one JSON object or a list of them and may repeat. Keys: ``name``,
``workload`` (required), ``size`` (4096), ``sleep_ms`` (the workload's default), ``warmup``
(5), ``arrival`` (closed), ``rate_hz``, ``seed`` (0), ``params`` ({}), ``priority`` (0).

Commands on stdin, one JSON object a line, as for ``workers.run --serve`` but addressed:
``{"cmd": "run", "tenant": T, "seq", "phase", "round", "iterations", "start_at_ns",
"until_stopped", "max_duration_s"}``; ``{"cmd": "stop", "tenant": T, "seq": S}`` (no tenant: every
tenant); ``{"cmd": "load", "tenants": [...]}`` (another scenario's tenants, as ``--tenant-json``
objects: the process ends its tenants' threads, releases what they held and checks it is clean
as ``workers.run`` does, then starts the new ones; every new tenant says ``released``, then
``ready``); ``{"cmd": "exit"}`` (the process).

Output: the usual protocol lines, each tenant under its own name (``KTS_META`` with
``"sharing": "streams"`` and ``"streams": true|false``, ``KTS_EVENT ready``, ``KTS_APP,v2``).
Protocol lines have the process's standard output to themselves, written through one lock in
whole lines (``workers.process.protocol_stream``); a tenant's own ``print`` goes to stderr as
whole lines prefixed ``[tenant] ``, so the stderr shown with an error says whose it is and no
workload can write a line in another tenant's name. On the CPU the mode runs as plain threads,
without streams, so that CI can exercise it. The threads share one GIL, so host latency here
includes waits for another tenant's Python (``--switch-interval-ms`` sets how long a busy thread
may keep it; see docs/sharing-modes.md).

Any tenant's failure ends the process (one CUDA context: after an error in one stream, the
others' results are not to be trusted). Exit codes as ``workers.run``: 0, 1, 2 bad arguments
or config, 3 CUDA out of memory, 4 no CUDA device.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from pytest_kts.constants import DEVICES, STREAMS_WORKER_MODULE

from .harness import Emitter, PhaseControl
from .process import protocol_stream
from .resident import Blank, bring_up
from .run import (
    EXIT_NO_DEVICE,
    EXIT_OOM,
    EXIT_USAGE,
    _die_with_parent,
    _env,
    _interpreter_s,
    read_commands,
)

_ARRIVALS = ("closed", "constant", "poisson")
_KEYS = {
    "name", "workload", "size", "sleep_ms", "warmup", "arrival", "rate_hz", "seed", "params",
    "priority",
}  # fmt: skip
# How long an exit waits for idle tenant threads before the process ends regardless (a thread
# may be inside a long phase, or hung in its workload).
_JOIN_S = 1.0


@dataclass(frozen=True)
class TenantArgs:
    """One tenant as given on the command line, checked."""

    name: str
    workload: str
    size: int = 4096
    sleep_ms: float | None = None  # None: the workload's default, read where torch is loaded
    warmup: int = 5
    arrival: str = "closed"
    rate_hz: float | None = None
    seed: int = 0
    params: dict[str, str] = field(default_factory=dict)
    priority: int = 0

    @classmethod
    def from_json(cls, obj: object) -> TenantArgs:
        from pytest_kts.protocol import check_tenant_name

        if not isinstance(obj, dict):
            raise ValueError(f"a tenant must be a JSON object, got {obj!r}")
        unknown = set(obj) - _KEYS
        if unknown:
            raise ValueError(f"tenant {obj.get('name')!r}: unknown keys {sorted(unknown)}")
        if "workload" not in obj:
            raise ValueError(f"tenant {obj.get('name')!r}: 'workload' is required")
        workload = str(obj["workload"])
        name = check_tenant_name(str(obj.get("name") or workload.split(":")[-1]).lower())
        sleep_ms = obj.get("sleep_ms")
        priority = obj.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"tenant {name}: priority must be an integer, got {priority!r}")
        params = obj.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"tenant {name}: params must be a JSON object")
        rate = obj.get("rate_hz")
        spec = cls(
            name=name,
            workload=workload,
            size=int(obj.get("size", 4096)),
            sleep_ms=None if sleep_ms is None else float(sleep_ms),
            warmup=int(obj.get("warmup", 5)),
            arrival=str(obj.get("arrival", "closed")),
            rate_hz=float(rate) if rate else None,
            seed=int(obj.get("seed", 0)),
            params={str(k): str(v) for k, v in params.items()},
            priority=priority,
        )
        if spec.size <= 0 or spec.warmup < 0 or (spec.sleep_ms or 0.0) < 0:
            raise ValueError(f"tenant {name}: size must be > 0; warmup and sleep_ms >= 0")
        if spec.arrival not in _ARRIVALS:
            raise ValueError(f"tenant {name}: arrival must be one of {_ARRIVALS}")
        if spec.arrival != "closed" and not (spec.rate_hz and spec.rate_hz > 0):
            raise ValueError(f"tenant {name}: an open-loop arrival needs rate_hz > 0")
        return spec


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {STREAMS_WORKER_MODULE}",
        description="Every tenant as a thread and CUDA stream of one process (sharing: streams).",
    )
    p.add_argument("--serve", action="store_true", help="stay resident; phases come on stdin")
    p.add_argument("--device", choices=DEVICES, default=_env("DEVICE", "auto"))
    p.add_argument(
        "--switch-interval-ms", type=float, default=None, metavar="MS",
        help="the interpreter's thread switch interval (sys.setswitchinterval); Python's own "
        "is 5 ms, and a thread waiting for the GIL can wait that long",
    )  # fmt: skip
    p.add_argument(
        "--tenant-json", action="append", default=[], metavar="JSON",
        help="one tenant as a JSON object, or a JSON list of them; repeat for more",
    )  # fmt: skip
    args = p.parse_args(argv)
    if not args.serve:
        # Phases are addressed per tenant and ended by "stop": there is no one-shot form.
        p.error("the streams worker only runs resident: pass --serve")
    tenants: list[TenantArgs] = []
    for text in args.tenant_json:
        try:
            value = json.loads(text)
            items = value if isinstance(value, list) else [value]
            tenants += [TenantArgs.from_json(item) for item in items]
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            p.error(f"--tenant-json {text[:80]!r}: {exc}")
    names = [t.name for t in tenants]
    if not tenants:
        p.error("give at least one --tenant-json")
    if len(set(names)) != len(names):
        p.error(f"tenant names must be unique, got {names}")
    if args.switch_interval_ms is not None and not args.switch_interval_ms > 0:
        p.error("--switch-interval-ms must be > 0")
    args.tenants = tenants
    return args


class SharedOutput:
    """The process's stdout, shared by every tenant thread: one writer at a time, whole lines.

    ``TextIOWrapper`` is not thread-safe, and ``print`` writes its text and its newline in two
    calls, so without one lock two threads could splice a line.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write_lines(self, text: str) -> None:
        with self.lock:
            self.stream.write(text)
            self.stream.flush()


class RoutedStdout(io.TextIOBase):
    """Stands in for ``sys.stdout``: a thread's stray output becomes whole, tagged lines.

    Text is held per thread until its newline, then written to stderr under one lock with the
    writing tenant's ``[name] `` prefix (none for the main thread), so two tenants' prints never
    splice and the stderr shown with an error says whose a line is.
    """

    def __init__(self, out: SharedOutput) -> None:
        super().__init__()
        self._out = out
        self._local = threading.local()

    def bind(self, tenant: str) -> None:
        """Tag what the calling thread prints with ``tenant``."""
        self._local.tag = f"[{tenant}] "

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        pending: str = getattr(self._local, "pending", "") + s
        *lines, rest = pending.split("\n")
        self._local.pending = rest
        if lines:
            tag: str = getattr(self._local, "tag", "")
            self._out.write_lines("".join(f"{tag}{line}\n" for line in lines))
        return len(s)

    def flush(self) -> None:
        # A partial line stays held: flushing it would let it be cut by another thread's line.
        return None

    def fileno(self) -> int:
        return self._out.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._out.stream, "encoding", None) or "utf-8"

    def isatty(self) -> bool:
        return False


class SharedLockEmitter(Emitter):
    """A harness Emitter whose flushes take the process-wide output lock."""

    def __init__(self, out: SharedOutput, tenant: str) -> None:
        super().__init__(out.stream, tenant)
        # Emitter.flush writes a chunk of whole lines under self._lock: one lock shared by all
        # tenants makes each chunk land whole.
        self._lock = out.lock


def _priority_range(torch: Any) -> tuple[int, int]:
    """(least, greatest) stream priority; greatest is the smaller number."""
    fn = getattr(torch.cuda.Stream, "priority_range", None)
    if callable(fn):
        least, greatest = fn()
        return int(least), int(greatest)
    # Older builds: torch clamps an out-of-range priority to the nearest valid one, so probe.
    return (
        int(torch.cuda.Stream(priority=1 << 20).priority),
        int(torch.cuda.Stream(priority=-(1 << 20)).priority),
    )


@dataclass
class _Tenant:
    args: TenantArgs
    emit: SharedLockEmitter
    ready: bool = False
    commands: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    control: PhaseControl = field(default_factory=PhaseControl)
    thread: threading.Thread | None = None


class _Process:
    """The tenants of this process and what ends it."""

    def __init__(
        self, out: SharedOutput, routed: RoutedStdout, device: str, blank: Blank,
        startup: dict[str, float],
    ) -> None:  # fmt: skip
        self.out = out
        self.routed = routed
        self.device = device
        self.tenants: dict[str, _Tenant] = {}
        self.blank = blank
        self.startup = startup  # before the tenants' build: the process's start, or a release
        # One tenant builds (and captures its CUDA graphs) at a time: a capture that overlaps
        # another thread's build or capture can fail outright (cudaErrorIllegalState, seen on
        # an H100 when a graphed decode built beside a prefill), whatever its error mode.
        self.build_lock = threading.Lock()

    def start(self, tenants: Sequence[TenantArgs]) -> None:
        for a in tenants:
            self.tenants[a.name] = _Tenant(a, SharedLockEmitter(self.out, a.name))
        for t in self.tenants.values():
            t.thread = threading.Thread(
                target=self.tenant_main, args=(t,), name=f"kts-{t.args.name}", daemon=True
            )
            t.thread.start()

    def load(self, tenants: Sequence[TenantArgs]) -> None:
        """End the tenants' threads, release what they held, start ``tenants`` if clean (if
        not, hold nothing: the backend retires this process)."""
        started = time.perf_counter()
        joined = self.shutdown()
        before = list(self.tenants)
        self.tenants.clear()
        released = self.blank.release()
        if not joined:
            released["clean"] = False
            released["leftover"]["tenant_threads"] = [0, 1]
        released |= {"from": before, "release_s": round(time.perf_counter() - started, 6)}
        for a in tenants:
            SharedLockEmitter(self.out, a.name).event("released", released)
        if released["clean"]:
            self.startup = {"release_s": released["release_s"]}
            self.start(tenants)

    def fail(self, tenant: _Tenant, exc: BaseException) -> None:
        """Report ``tenant``'s failure and end the process with its exit code."""
        # As workers.run: a ValueError while building is a config error (a bad workload name
        # or params); once measuring, anything raised is the workload's failure.
        if isinstance(exc, ValueError) and not tenant.ready:
            kind, code = "config", EXIT_USAGE
        else:
            oom = type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()
            kind, code = ("oom", EXIT_OOM) if oom else ("exception", 1)
        try:
            tenant.emit.event("error", {"kind": kind, "message": str(exc)[:500]})
            print(f"tenant {tenant.args.name!r} failed:", file=sys.stderr)
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            sys.stderr.flush()
        finally:
            # Holding the output lock, no other thread is half-way through a line when we go.
            # os._exit: other threads may be inside CUDA calls that must not see interpreter
            # shutdown, and one failed stream leaves the shared context suspect anyway.
            self.out.lock.acquire(timeout=5)
            with contextlib.suppress(Exception):
                self.out.stream.flush()
            os._exit(code)

    def tenant_main(self, tenant: _Tenant) -> None:
        import torch

        from .harness import Arrival, Clock, machine_facts, run_phase
        from .workloads import DEFAULT_SLEEP_MS, resolve

        a = tenant.args
        self.routed.bind(a.name)
        try:
            cuda = self.device == "cuda"
            facts: dict[str, Any] = {
                "sharing": "streams",
                "streams": cuda,
                # Host latency here includes waits for the GIL: a thread that wants it may wait
                # up to about this long for a busy one to let go.
                "switch_interval_ms": sys.getswitchinterval() * 1000.0,
            }
            stream_ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            stream = None
            if cuda:
                stream = torch.cuda.Stream(priority=a.priority)
                # The context sets this thread's current stream: the workload's kernels and
                # the Clock's CUDA events are all recorded on it.
                stream_ctx = torch.cuda.stream(stream)
                least, greatest = _priority_range(torch)
                facts.update(
                    priority=int(stream.priority),
                    priority_requested=a.priority,
                    priority_range=[least, greatest],
                )
            else:
                # No streams on the CPU, so no priority takes effect.
                facts.update(priority=None, priority_requested=a.priority)
            timings = dict(self.startup)
            factory = resolve(a.workload)
            # inference_mode and the current stream are per thread: enter both here.
            with torch.inference_mode(), stream_ctx:
                waited = time.perf_counter()
                with self.build_lock:
                    began = time.perf_counter()
                    step = factory(torch.device(self.device), a.size, a.seed, **a.params)
                    if stream is not None:
                        # The build's copies ran on this stream: done before timing.
                        stream.synchronize()
                    built = time.perf_counter()
                    clock = Clock(cuda=cuda, step=step)
                    prepared = time.perf_counter()
                    base = machine_facts(self.device)
                    tenant.emit.meta(
                        base | clock.facts() | facts | {"workload": a.workload, "size": a.size}
                    )
                    for _ in range(a.warmup):
                        clock.time(step, 0)
                sleep_ms = a.sleep_ms
                if sleep_ms is None:
                    sleep_ms = DEFAULT_SLEEP_MS.get(a.workload, 0.0)
                arrival = Arrival(a.arrival, sleep_ms / 1000.0, a.rate_hz, a.seed)
                timings.update(
                    build_wait_s=began - waited,
                    build_s=built - began,
                    prepare_s=prepared - built,
                    warmup_s=time.perf_counter() - prepared,
                )
                startup = {k: round(v, 6) for k, v in timings.items()}
                tenant.emit.event("ready", {"pid": os.getpid(), "startup": startup})
                tenant.ready = True
                seq = 0
                while (command := tenant.commands.get()) is not None:
                    seq = int(command.get("seq", seq + 1))
                    tenant.control.begin(seq)
                    run_phase(
                        step, clock=clock, emit=tenant.emit, tenant=a.name,
                        phase=command["phase"], round=int(command["round"]),
                        iterations=int(command["iterations"]), arrival=arrival,
                        start_at_ns=command.get("start_at_ns"), control=tenant.control, seq=seq,
                        until_stopped=bool(command.get("until_stopped")),
                        max_duration_s=command.get("max_duration_s"),
                    )  # fmt: skip
        except BaseException as exc:
            self.fail(tenant, exc)
        finally:
            tenant.emit.flush()

    def dispatch(self, command: dict[str, Any]) -> bool:
        """Act on one command; False when the process should exit."""
        cmd = command.get("cmd")
        if cmd == "exit":
            return False
        name = command.get("tenant")
        if cmd == "stop":
            targets = [self.tenants[name]] if name in self.tenants else []
            if name is None:
                targets = list(self.tenants.values())
            seq = command.get("seq")
            for t in targets:
                t.control.stop(int(seq) if isinstance(seq, int) else None)
            return True
        if cmd == "run" and name in self.tenants:
            self.tenants[name].commands.put(command)
            return True
        if cmd == "load":
            try:
                items = command.get("tenants")
                if not isinstance(items, list) or not items:
                    raise ValueError("a load command needs tenants, a list of tenant objects")
                tenants = [TenantArgs.from_json(item) for item in items]
            except (ValueError, TypeError) as exc:
                print(f"ignored a load command: {exc}", file=sys.stderr)
                return True
            self.load(tenants)
            return True
        # No tenant to blame on the protocol: stderr, as workers.run does for non-JSON input.
        print(f"ignored a command with no known tenant: {command}", file=sys.stderr)
        return True

    def shutdown(self) -> bool:
        """Ask every thread to finish; True when all did (then a normal exit is safe)."""
        for t in self.tenants.values():
            t.control.close()
            t.commands.put(None)
        for t in self.tenants.values():
            if t.thread is not None:
                t.thread.join(timeout=_JOIN_S)
        return not any(t.thread and t.thread.is_alive() for t in self.tenants.values())


def _read_commands() -> Callable[[], dict[str, Any] | None]:
    """The next JSON command from stdin, None at EOF (the backend has gone)."""
    commands = read_commands(sys.stdin)
    return lambda: next(commands, None)


def main(argv: Sequence[str] | None = None) -> int:
    startup = _interpreter_s(time.time_ns())
    args = parse_args(argv)
    # Protocol lines on their own descriptor; a tenant's prints go, tagged, to stderr.
    out = SharedOutput(protocol_stream())
    routed = RoutedStdout(SharedOutput(sys.stderr))
    _die_with_parent()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    try:
        device, timings = bring_up(args.device)
        import torch
    except LookupError as exc:
        # No tenant thread exists yet: report under every tenant's name, so each one's
        # reader sees why.
        for t in args.tenants:
            emit = SharedLockEmitter(out, t.name)
            emit.event("error", {"kind": "no_device", "message": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICE
    except ValueError as exc:  # KTS_CPU_THREADS that is no thread count
        for t in args.tenants:  # each tenant's reader learns why
            SharedLockEmitter(out, t.name).event("error", {"kind": "config", "message": f"{exc}"})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # bring_up gave the CPU one intra-op thread: each op runs on its tenant's thread.
    sys.stdout = routed
    proc = _Process(out, routed, device, Blank(torch, device == "cuda"), startup | timings)
    proc.start(args.tenants)
    next_command = _read_commands()
    while (command := next_command()) is not None and proc.dispatch(command):
        pass
    if proc.shutdown():
        sys.stdout = sys.__stdout__
        return 0
    # A thread is still inside a phase (the backend went mid-phase) or hung in its workload.
    with out.lock:
        out.stream.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
