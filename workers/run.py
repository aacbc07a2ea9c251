"""A tenant's worker process: ``python -m pytest_kts.workers.run``.

Standalone, it runs one phase and exits (a Kubernetes Job, or by hand). With ``--serve`` it
stays resident: it builds its workload once, says ``ready``, and runs the phases the local
backend sends as JSON lines on stdin, so the CUDA context and memory persist across phases.
A resident worker can be handed another tenant (``{"cmd": "load", "argv": [...]}``): it
releases the one it holds, checks that nothing of it is left (``resident.py``), and builds the
new one without starting torch or CUDA again. ``--spare`` starts one that holds no tenant yet.

Exit codes: 0 done, 2 bad arguments, 3 CUDA out of memory, 4 no CUDA device, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .harness import PhaseControl
    from .resident import Tenant

from pytest_kts.constants import (
    ARRIVALS,
    DEVICES,
    EXIT_NO_DEVICE,
    EXIT_OOM,
    EXIT_USAGE,
    PHASES,
    WORKER_MODULE,
)

__all__ = ["EXIT_NO_DEVICE", "EXIT_OOM", "EXIT_USAGE", "main", "parse_args"]


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def parse_args(argv: Sequence[str] | None, *, workload: str | None = None) -> argparse.Namespace:
    from .workloads import DEFAULT_SLEEP_MS

    p = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}", description=__doc__)
    default_workload = workload or _env("WORKLOAD", "fft")
    p.add_argument("--tenant", default=_env("TENANT"))
    p.add_argument("--workload", default=default_workload)
    p.add_argument("--size", type=int, default=int(_env("MATRIX_SIZE", "4096") or 4096))
    p.add_argument("--sleep-ms", type=float, default=None)
    p.add_argument("--warmup", type=int, default=int(_env("WARMUP", "5") or 5))
    p.add_argument("--arrival", choices=ARRIVALS, default="closed")
    p.add_argument("--rate-hz", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default=_env("DEVICE", "auto"))
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--phase", choices=PHASES, default=_env("PHASE", "solo"))
    p.add_argument("--round", type=int, default=int(_env("KTS_ROUND", "0") or 0))
    p.add_argument("--iterations", type=int, default=int(_env("ITERATIONS", "800") or 800))
    p.add_argument("--start-at-ns", type=int, default=None)
    p.add_argument("--min-duration-s", type=float, default=0.0)
    p.add_argument("--max-duration-s", type=float, default=None)
    p.add_argument("--serve", action="store_true", help="stay resident; phases come on stdin")
    p.add_argument(
        "--spare", action="store_true", help="with --serve: hold no tenant until one is loaded"
    )
    args = p.parse_args(argv)
    if args.sleep_ms is None:
        env_sleep = _env("SLEEP_MS")
        args.sleep_ms = float(env_sleep) if env_sleep else DEFAULT_SLEEP_MS.get(args.workload, 0.0)
    args.tenant = args.tenant or args.workload.split(":")[-1].lower()
    if args.size <= 0 or args.iterations < 0 or args.warmup < 0 or args.sleep_ms < 0:
        p.error("size must be > 0; iterations, warmup and sleep-ms must be >= 0")
    if args.arrival != "closed" and not (args.rate_hz and args.rate_hz > 0):
        p.error("an open-loop arrival needs --rate-hz > 0")
    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--param takes KEY=VALUE, got {item!r}")
        params[key] = value
    args.params = params
    return args


def _select_device(requested: str) -> str:
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise LookupError("no CUDA device: torch.cuda.is_available() is False")
    return "cpu"


def read_commands(stream: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The backend's commands, one JSON object a line; anything else is reported and skipped."""
    for line in stream:
        line = line.strip()
        if not line:
            continue
        try:
            command = json.loads(line)
        except json.JSONDecodeError:
            print(f"ignored a command that is not JSON: {line[:80]!r}", file=sys.stderr)
            continue
        if isinstance(command, dict):
            yield command


def _command_reader(commands: queue.Queue[dict[str, Any] | None], control: PhaseControl) -> None:
    """Reads the backend's commands; a ``stop`` ends the running phase at its next iteration."""
    for command in read_commands(sys.stdin):
        if command.get("cmd") == "stop":
            seq = command.get("seq")
            control.stop(int(seq) if isinstance(seq, int) else None)
            continue
        if command.get("cmd") == "exit":
            control.close()
        commands.put(command)
    # EOF: the backend has gone. Stop any phase in progress at once and exit.
    control.close()
    commands.put(None)


def _die_with_parent() -> None:
    """Linux: end this worker if the process that started it dies (no orphans, even on SIGKILL)."""
    parent = _env("KTS_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def _interpreter_s(entered_ns: int) -> dict[str, float]:
    """Seconds from the backend's spawn (``KTS_SPAWNED_NS``) to this process's main()."""
    spawned = _env("KTS_SPAWNED_NS")
    if not spawned or not spawned.isdigit():
        return {}
    return {"interpreter_s": max(entered_ns - int(spawned), 0) / 1e9}


def _load_args(command: dict[str, Any], device: str, workload: str | None) -> argparse.Namespace:
    """A ``load`` command's tenant: the same arguments a worker is started with."""
    argv = command.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"a load command needs argv, a list of strings: {command}")
    try:
        args = parse_args(argv, workload=workload)
    except SystemExit:
        raise ValueError(f"bad arguments in a load command: {argv}") from None
    if args.device not in ("auto", device):
        raise ValueError(f"this worker runs on {device}; a load asked for {args.device}")
    return args


def _run(held: Tenant, command: dict[str, Any], control: PhaseControl, seq: int) -> None:
    """One phase of the tenant held. A function of its own: no local of the serve loop may
    keep a tenant alive once the next load releases it."""
    from .harness import run_phase

    control.begin(seq)
    run_phase(
        held.step, clock=held.clock, emit=held.emit, tenant=held.name,
        phase=command["phase"], round=int(command["round"]),
        iterations=int(command["iterations"]), arrival=held.arrival,
        start_at_ns=command.get("start_at_ns"), control=control, seq=seq,
        until_stopped=bool(command.get("until_stopped")),
        max_duration_s=command.get("max_duration_s"),
    )  # fmt: skip


def main(argv: Sequence[str] | None = None, *, workload: str | None = None) -> int:
    entered_ns = time.time_ns()
    args = parse_args(argv, workload=workload)

    from pytest_kts.protocol import check_tenant_name

    from .harness import Emitter, PhaseControl, machine_facts, run_phase
    from .process import protocol_stream
    from .resident import OWN_THREAD_PREFIX, Resident, bring_up

    try:
        check_tenant_name(args.tenant)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    # Before any workload code: its prints go to stderr, never among the protocol lines.
    out = protocol_stream()
    emit = Emitter(out, args.tenant)
    if args.serve:
        _die_with_parent()
    try:
        startup = _interpreter_s(entered_ns)
        device, timings = bring_up(args.device)
        import torch

        with torch.inference_mode():
            worker = Resident(device, startup | timings)
            if args.serve and args.spare:
                emit.meta(machine_facts(device) | {"spare": True})
                emit.event("up", {"pid": os.getpid(), "startup": worker.startup})
                worker.startup = {}
            else:
                worker.load(args, emit)
            if not args.serve:
                assert worker.tenant is not None
                run_phase(
                    worker.tenant.step, clock=worker.tenant.clock, emit=emit, tenant=args.tenant,
                    phase=args.phase, round=args.round, iterations=args.iterations,
                    arrival=worker.tenant.arrival, start_at_ns=args.start_at_ns,
                    min_duration_s=args.min_duration_s, max_duration_s=args.max_duration_s,
                )  # fmt: skip
                return 0
            commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
            control = PhaseControl()
            threading.Thread(
                target=_command_reader,
                args=(commands, control),
                daemon=True,
                name=f"{OWN_THREAD_PREFIX}commands",
            ).start()
            seq = 0
            while (command := commands.get()) is not None:
                cmd = command.get("cmd")
                if cmd == "exit":
                    break
                if cmd == "load":
                    args = _load_args(command, device, workload)
                    check_tenant_name(args.tenant)
                    # Every line from here on is the new tenant's, its predecessor's release too.
                    emit = Emitter(out, args.tenant)
                    released = worker.release()
                    emit.event("released", released)
                    if released["clean"]:
                        worker.startup = {"release_s": released["release_s"]}
                        worker.load(args, emit)
                    # Not clean: hold nothing and wait; the backend retires this process.
                    continue
                if cmd != "run" or worker.tenant is None:
                    emit.event("error", {"kind": "protocol", "message": f"unknown {command}"})
                    continue
                seq = int(command.get("seq", seq + 1))
                _run(worker.tenant, command, control, seq)
            # The backend has gone or said exit: everything is written. Leave at once rather
            # than through the interpreter's (and torch's) teardown, which on a busy machine
            # takes longer than Ctrl-C should; the driver frees the CUDA context either way.
            emit.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    except LookupError as exc:
        emit.event("error", {"kind": "no_device", "message": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICE
    except ValueError as exc:
        emit.event("error", {"kind": "config", "message": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        # OOM from evidence only: torch's OutOfMemoryError or the CUDA allocator's own words.
        oom = type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)
        emit.event(
            "error",
            {
                "kind": "oom" if oom else "exception",
                "type": type(exc).__name__,
                "message": str(exc)[:500],
            },
        )
        traceback.print_exc()
        return EXIT_OOM if oom else 1
    finally:
        emit.flush()


if __name__ == "__main__":
    sys.exit(main())
