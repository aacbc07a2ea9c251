"""Tenants as separate OS processes on one device.

Each tenant runs in a worker process (``python -m pytest_kts.workers.run --serve``: spawned,
never forked, so no CUDA state is inherited) that builds its workload once and stays resident
across phases. Phases start together by a barrier on the epoch clock. A worker that crashes,
hangs or runs out of GPU memory ends the phase with a :class:`WorkerError` carrying the tail of
its stderr; :meth:`LocalBackend.close` always leaves no process behind, Ctrl-C included.

Processes are not tied to a tenant. A backend that runs several scenarios (a session's pool)
keeps its processes, whose interpreter, torch and CUDA context are up, and hands a new tenant
to one that holds none of this scenario's: the worker releases what it held, checks it is
clean (else it is retired and a fresh process takes the tenant), builds and warms up the new
workload. Processes are spawned only when there are too few, all at once, together with
``spares`` more that hold no tenant, so the next scenario with one tenant more finds one up.
Nothing starts while a phase runs: processes start, load and warm up inside :meth:`start`,
which returns once every one of them is ready.

One file on purpose: the backend is one state machine over its processes. Start-up, phases,
cuts and failures all read and write the same maps of workers and spares and the one queue of
lines their reader threads fill, and each decides what a line means by the state the others
left; apart, every piece would reach into the others' state.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pytest_kts import colocation
from pytest_kts.backends.base import Backend, PhaseOutput, PhasePlan, TenantSpec
from pytest_kts.constants import WORKER_MODULE
from pytest_kts.errors import ConfigError, WorkerError
from pytest_kts.mps import MpsDaemon
from pytest_kts.protocol import MAX_LINE_BYTES, Event, LineReader, Meta

# Time between sending a phase and its common start: enough for every worker to read it.
_BARRIER_MARGIN_S = 0.1
# A worker also stops by itself this long after its phase's share, should a stop line be lost.
_CUT_BACKSTOP_S = 2.0
_STDERR_TAIL_LINES = 30
_STDERR_TAIL_BYTES = 64 * 1024
# What CUDA or torch print when the GPU runs out of memory (in a traceback on stderr).
_CUDA_OOM_MARKS = ("CUDA out of memory", "OutOfMemoryError", "CUDA_ERROR_OUT_OF_MEMORY")
_EOF = object()


def _project_paths() -> list[str]:
    """Where a spawned worker finds this package (when it runs from a source tree) and a
    user's ``module:function`` tenants (the working directory)."""
    here = Path(__file__).resolve().parents[2]
    return [str(here), os.getcwd()]


def spawn_worker(
    argv: Sequence[str], env: Mapping[str, str], stderr: IO[str]
) -> subprocess.Popen[str]:
    """A fresh interpreter (never a fork) with pipes for commands and protocol lines."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        # Protocol lines are ASCII; a stray byte that is not UTF-8 is one malformed line, not
        # the end of the stream.
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=dict(env),
        # Its own session: Ctrl-C reaches pytest alone, and close() stops the whole group.
        start_new_session=True,
    )


@dataclass
class _Worker:
    spec: TenantSpec | None  # None: a spare, up (interpreter, torch, CUDA) and holding no tenant
    process: subprocess.Popen[str]
    stderr_file: IO[str]
    meta: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    # The name its lines are filed under (read by its reader thread for every line): the
    # tenant's, or a spare's ("~spare-N", which no tenant name can be).
    label: str = ""
    env_key: tuple[tuple[str, str], ...] = ()  # the tenant environment it was started with
    sent_ns: int = 0  # when its spawn or its last load was sent
    startup: dict[str, Any] = field(default_factory=dict)  # where that start went
    stderr_from: int = 0  # where the tenant it holds began in its stderr file (a reused one)

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else self.label

    def stderr_tail(self) -> str:
        # The file is unlinked once the worker has it (nothing is left if pytest dies): read
        # its end through our descriptor, with pread, which leaves the shared offset alone.
        try:
            self.stderr_file.flush()
            fd = self.stderr_file.fileno()
            size = os.fstat(fd).st_size
            # Only the tenant it holds now: a reused process's earlier tenants wrote above.
            start = max(self.stderr_from, size - _STDERR_TAIL_BYTES)
            text = os.pread(fd, size - start, start).decode("utf-8", errors="replace")
        except (OSError, ValueError):
            return ""
        return "\n".join(text.rstrip().splitlines()[-_STDERR_TAIL_LINES:])


def _env_key(spec: TenantSpec) -> tuple[tuple[str, str], ...]:
    # A process's environment is fixed at its start (CUDA reads some of it once, at init):
    # only a tenant asking for the same one may take it over.
    return tuple(sorted((str(k), str(v)) for k, v in spec.env.items()))


class LocalBackend(Backend):
    name = "local"
    checks_colocation = True

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        sharing: str = "timeslice",
        max_idle: int = 8,
        spares: int = 0,
    ) -> None:
        self.env = dict(env or {})
        self.python = python or sys.executable
        self._workers: dict[str, _Worker] = {}
        # Processes holding no tenant, by label: up and ready to take one.
        self._spares: dict[str, _Worker] = {}
        self._spare_count = 0
        # (label, line or _EOF, the worker's process): a process may hold another tenant
        # later, so a line is checked against the process that printed it.
        self._lines: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._closed = False
        self._device = "cpu"
        self.sharing = sharing
        self._mps: MpsDaemon | None = None
        self._seq = 0
        self._last_used: dict[str, float] = {}
        self.max_idle = max_idle
        self.spares = spares
        self.reused = 0  # workers a later start() found resident with the same spec
        self.reloaded = 0  # processes a later start() handed another tenant
        # The last start(): how long it took, and per tenant how and where the time went.
        self.startup: dict[str, Any] = {}
        self._notes: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, tenants: Sequence[TenantSpec], device: str) -> None:
        """Give every tenant a ready worker, and return when all are ready.

        A tenant whose spec is unchanged keeps its worker as it is. Every other tenant is
        loaded into a process that holds none of this scenario's tenants (its own old
        process when only its spec changed, else a spare, else the idle one used longest
        ago), and only when none is left is a process spawned, all of them at once. Workers
        of earlier scenarios stay resident but idle (they run nothing, so they take no time
        from the phases); at most ``max_idle`` of them are kept.
        """
        began = time.monotonic()
        names = [t.name for t in tenants]
        if len(set(names)) != len(names):
            raise ValueError(f"tenant names must be unique, got {names}")
        if (self._workers or self._spares) and device != self._device:
            raise ValueError(f"backend started on {self._device}, asked for {device}")
        self._device = device
        self._notes = []
        try:
            if self.sharing == "mps" and self._mps is None:
                if device != "cuda":
                    raise ConfigError("--kts-sharing mps needs a CUDA device")
                self._mps = MpsDaemon()
                self.env.update(self._mps.start())
            how: dict[str, str] = {}
            fresh = []
            for spec in tenants:
                worker = self._workers.get(spec.name)
                if worker is not None and worker.spec == spec and worker.process.poll() is None:
                    self.reused += 1
                    how[spec.name] = "resident"
                else:
                    fresh.append(spec)
            free = self._detach_free(names, [t.name for t in fresh])
            for spec in fresh:
                worker = self._take(free, spec)
                if worker is None:
                    self._spawn(spec, device)
                    how[spec.name] = "spawned"
                else:
                    self._load(worker, spec, device)
                    self.reloaded += 1
                    how[spec.name] = "reloaded"
            for worker in free:  # not needed now: back where it was, or gone if obsolete
                if worker.label in names:
                    self._stop_worker(worker)
                elif worker.spec is None:
                    self._spares[worker.label] = worker
                else:
                    self._workers[worker.label] = worker
            spares = 0
            if "spawned" in how.values():
                # Processes start anyway: start the spares beside them, in parallel.
                spares = max(self.spares - len(free), 0)
                for _ in range(spares):
                    self._spawn_spare(device)
            self._await_ready(how)
            self._trim_idle(names)
            self._last_used.update(dict.fromkeys(names, time.monotonic()))
            self.startup = self._startup_facts(names, how, time.monotonic() - began)
            self.startup["spares_started"] = spares
        except BaseException:
            self.close()
            raise

    def _detach_free(self, names: Sequence[str], fresh: Sequence[str]) -> list[_Worker]:
        """Take out of the maps every live process this scenario may hand a tenant: the old
        processes of tenants whose spec changed, spares, then idle workers by least recent
        use. Dead ones are stopped (the next line from them is no one's)."""
        changed = [self._workers.pop(t) for t in fresh if t in self._workers]
        spares = list(self._spares.values())
        self._spares.clear()
        idle = sorted(
            (t for t in self._workers if t not in names), key=lambda t: self._last_used.get(t, 0)
        )
        free = [*changed, *spares, *(self._workers.pop(t) for t in idle)]
        for worker in free:
            self._last_used.pop(worker.label, None)
            if worker.process.poll() is not None:
                self._stop_worker(worker)
        return [w for w in free if w.process.poll() is None]

    @staticmethod
    def _take(free: list[_Worker], spec: TenantSpec) -> _Worker | None:
        """The process ``spec`` should take over (its own old one first), or None."""
        key = _env_key(spec)
        matching = [w for w in free if w.env_key == key]
        if not matching:
            return None
        own = [w for w in matching if w.label == spec.name]
        worker = (own or matching)[0]
        free.remove(worker)
        return worker

    def _load(self, worker: _Worker, spec: TenantSpec, device: str) -> None:
        """Hand ``spec`` to a resident process; it says ``ready`` when built and warm."""
        # Relabel before sending: every line the process prints after this one is the new
        # tenant's, and it prints nothing between its last phase and the load.
        worker.spec, worker.label = spec, spec.name
        worker.meta, worker.ready, worker.startup = {}, False, {}
        worker.sent_ns = time.time_ns()
        with contextlib.suppress(OSError, ValueError):
            worker.stderr_file.flush()
            worker.stderr_from = os.fstat(worker.stderr_file.fileno()).st_size
        self._workers[spec.name] = worker
        self._send(worker, {"cmd": "load", "argv": spec.worker_argv(device)})

    def _trim_idle(self, active: Sequence[str]) -> None:
        idle = sorted(
            (t for t in self._workers if t not in active), key=lambda t: self._last_used.get(t, 0)
        )
        for tenant in idle[: max(len(idle) - self.max_idle, 0)]:
            self._retire(tenant)

    def _retire(self, tenant: str) -> None:
        """Stop one worker (a pool replacing or dropping it); the others stay."""
        self._last_used.pop(tenant, None)
        self._stop_worker(self._workers.pop(tenant))

    def _stop_worker(self, worker: _Worker) -> None:
        self._send(worker, {"cmd": "exit"})
        with contextlib.suppress(OSError):
            if worker.process.stdin:
                worker.process.stdin.close()
        self._stop_process(worker, 5.0)
        self._discard_stderr(worker)

    @staticmethod
    def _discard_stderr(worker: _Worker) -> None:
        # The file's name was unlinked at spawn; only the descriptor is left to close.
        worker.stderr_file.close()

    def _spawn(self, spec: TenantSpec, device: str) -> None:
        argv = [*spec.worker_argv(device), "--serve"]
        worker = self._start_process(spec.name, argv, spec.env)
        worker.spec, worker.env_key = spec, _env_key(spec)
        self._workers[spec.name] = worker

    def _spawn_spare(self, device: str) -> None:
        self._spare_count += 1
        label = f"~spare-{self._spare_count}"
        argv = ["--tenant", "spare", "--device", device, "--serve", "--spare"]
        self._spares[label] = self._start_process(label, argv, {})

    def _start_process(self, label: str, argv: Sequence[str], extra: Mapping[str, str]) -> _Worker:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra)
        paths = [*_project_paths(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["KTS_PARENT_PID"] = str(os.getpid())
        stderr_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
            "w+", prefix=f"kts-{label.lstrip('~')}-", suffix=".stderr", delete=False
        )
        sent_ns = time.time_ns()
        env["KTS_SPAWNED_NS"] = str(sent_ns)  # the worker counts its interpreter's start from it
        try:
            process = spawn_worker([self.python, "-m", WORKER_MODULE, *argv], env, stderr_file)
        finally:
            # The worker holds its own descriptor: no kts-*.stderr file outlives this line,
            # whatever ends pytest (SIGKILL included).
            os.unlink(stderr_file.name)
        worker = _Worker(None, process, stderr_file, label=label, sent_ns=sent_ns)
        threading.Thread(
            target=self._pump, args=(worker, process.stdout), daemon=True, name=f"kts-{label}"
        ).start()
        return worker

    def _pump(self, worker: _Worker, stream: IO[str] | None) -> None:
        assert stream is not None
        try:
            while line := stream.readline(MAX_LINE_BYTES + 1):
                if len(line) > MAX_LINE_BYTES and not line.endswith("\n"):
                    # Longer than any protocol line: keep its start (a malformed or foreign
                    # line) and skip the rest, never holding it whole.
                    while (rest := stream.readline(MAX_LINE_BYTES + 1)) and not rest.endswith("\n"):
                        pass
                self._lines.put((worker.label, line, worker.process))
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put((worker.label, _EOF, worker.process))

    def _await_ready(self, how: dict[str, str] | None = None) -> None:
        """Wait until every tenant's worker and every spare is ready.

        A process whose release was not clean is retired and its tenant spawned afresh; a
        spare that fails or hangs is dropped (no tenant waits for it), with a note.
        """
        how = {} if how is None else how
        deadline = time.monotonic() + self.start_timeout_s
        # One reader per worker, bound to the tenant it is loading: no line sets another
        # tenant's facts or errors. Spares hold no tenant yet: theirs is unbound.
        readers: dict[str, LineReader] = {}
        reader = LineReader()
        while True:
            waiting = [t for t, w in self._workers.items() if not w.ready]
            if not waiting and all(w.ready for w in self._spares.values()):
                return
            got = self._next_line(
                deadline,
                f"to start (import, CUDA init, build, warmup) within {self.start_timeout_s:g} s",
                among=waiting, quiet=not waiting,
            )  # fmt: skip
            if got is None:  # only spares left, and their time is up
                for label in [k for k, w in self._spares.items() if not w.ready]:
                    self._drop_spare(label, "did not start in time")
                continue
            label, item = got
            spare = self._spares.get(label)
            if spare is not None:
                self._spare_line(label, spare, item, reader)
                continue
            worker = self._workers.get(label)
            if worker is None:
                continue  # a line from a worker that was just retired
            if item is _EOF:
                self._fail_exited(worker, "exited while starting")
            record = readers.setdefault(label, LineReader.bound(worker.name)).feed(str(item))
            if isinstance(record, Meta):
                worker.meta.update(record.facts)
            elif isinstance(record, Event):
                self._check_error_event(worker, record)
                if record.name == "released" and not record.data.get("clean", False):
                    self._replace_unclean(worker, record.data)
                    how[label] = "spawned"
                elif record.name == "ready":
                    worker.ready = True
                    worker.startup.update(record.data.get("startup") or {})
                    worker.startup["total_s"] = (time.time_ns() - worker.sent_ns) / 1e9

    def _spare_line(self, label: str, spare: _Worker, item: object, reader: LineReader) -> None:
        if item is _EOF:
            self._drop_spare(label, "exited while starting")
            return
        record = reader.feed(str(item))
        if isinstance(record, Meta):
            spare.meta.update(record.facts)
        elif isinstance(record, Event):
            if record.name == "error":
                self._drop_spare(label, f"failed: {record.data.get('message', '')}")
            elif record.name == "up":
                spare.ready = True
                spare.startup = dict(record.data.get("startup") or {})
                spare.startup["total_s"] = (time.time_ns() - spare.sent_ns) / 1e9

    def _drop_spare(self, label: str, why: str) -> None:
        spare = self._spares.pop(label)
        tail = spare.stderr_tail().splitlines()[-1:] if spare.process.poll() is not None else []
        self._stop_worker(spare)
        self._notes.append(f"a spare worker {why}{': ' + tail[0] if tail else ''}; not kept")

    def _replace_unclean(self, worker: _Worker, released: Mapping[str, Any]) -> None:
        """The process still held something of its last tenant: retire it, spawn afresh."""
        assert worker.spec is not None
        spec = worker.spec
        leftover = ", ".join(
            f"{k} {v[0]} -> {v[1]}" for k, v in dict(released.get("leftover") or {}).items()
        )
        self._notes.append(
            f"the process {spec.name} was given still held something of "
            f"{released.get('from')!r} after its release ({leftover}): retired, {spec.name} "
            "started in a fresh one"
        )
        self._retire(spec.name)
        self._spawn(spec, self._device)

    def _startup_facts(
        self, names: Sequence[str], how: Mapping[str, str], wall_s: float
    ) -> dict[str, Any]:
        tenants: dict[str, dict[str, Any]] = {}
        for name in names:
            entry: dict[str, Any] = {"how": how.get(name, "resident")}
            if entry["how"] != "resident":
                entry.update(self._workers[name].startup)
            tenants[name] = entry
        out: dict[str, Any] = {
            "wall_s": round(wall_s, 6),
            "tenants": tenants,
            "processes": len(self._workers) + len(self._spares),
            "spares": len(self._spares),
        }
        if self._notes:
            out["notes"] = list(self._notes)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        everyone = [*self._workers.values(), *self._spares.values()]
        for worker in everyone:
            self._send(worker, {"cmd": "exit"})
            try:
                if worker.process.stdin:
                    worker.process.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for worker in everyone:
            self._stop_process(worker, max(deadline - time.monotonic(), 0.1))
            self._discard_stderr(worker)
        if self._mps is not None:
            self._mps.stop()

    @staticmethod
    def _stop_process(worker: _Worker, grace_s: float) -> None:
        process = worker.process
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        else:
            # What its workload started (a server, a `sleep`) is in its process group: end
            # that too, or it outlives the run with init as its parent.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                process.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- phases --------------------------------------------------------------------------
    def run_phase(self, plan: PhasePlan, timeout_s: float) -> PhaseOutput:
        if self._closed:
            raise RuntimeError("backend is closed")
        unknown = set(plan.tenants) - set(self._workers)
        if unknown:
            raise ValueError(f"phase names tenants that were not started: {sorted(unknown)}")
        # Bound to the worker each stream comes from: a line naming another tenant (or phase,
        # or round) is counted as misaddressed and joins no one's samples.
        readers = {t: LineReader.bound(t, plan.phase, plan.round) for t in plan.tenants}
        ended: set[str] = set()
        reached: set[str] = set()
        measured = set(plan.measured)
        self._seq += 1
        seq = self._seq
        sent_ns = time.time_ns()
        start_at = sent_ns + int(_BARRIER_MARGIN_S * 1e9)
        for tenant, n in plan.iterations.items():
            command: dict[str, Any] = {
                "cmd": "run",
                "seq": seq,
                "phase": plan.phase,
                "round": plan.round,
                "iterations": int(n),
                "start_at_ns": start_at,
                "until_stopped": plan.until_stopped,
            }
            if plan.max_seconds is not None:
                # A backstop only: the backend stops the phase itself when its share ends.
                command["max_duration_s"] = plan.max_seconds + _CUT_BACKSTOP_S
            self._send(self._workers[tenant], command)
        now = time.monotonic()
        deadline = now + _BARRIER_MARGIN_S + timeout_s
        # The share counts from now, barrier included: it is what the phase may cost in wall time.
        cut_at = None if plan.max_seconds is None else now + plan.max_seconds
        stopped = cut = False
        what = f"to finish its {plan.phase} phase (round {plan.round}) within {timeout_s:g} s"
        while len(ended) < len(plan.tenants):
            if not stopped and cut_at is not None and time.monotonic() >= cut_at:
                # The phase's time share is spent: stop everyone, keep what was measured.
                self._stop_phase(plan, seq)
                stopped = cut = True
            wake = deadline if stopped or cut_at is None else min(deadline, cut_at)
            # Blame a tenant short of its target first: one that reached it may keep running.
            short = [t for t in plan.tenants if t not in reached] or list(plan.tenants)
            got = self._next_line(wake, what, among=short, quiet=wake < deadline)
            if got is None:
                continue
            tenant, item = got
            worker = self._workers.get(tenant)
            if worker is None or tenant not in readers:
                # An idle tenant printing (a warning, say), or one the pool retired or that
                # died idle (the next start() replaces it): not this phase's business.
                continue
            if item is _EOF:
                self._fail_exited(worker, f"exited during the {plan.phase} phase")
            record = readers[tenant].feed(str(item))
            if isinstance(record, Event):
                self._check_error_event(worker, record)
                if record.name == "target_reached":
                    reached.add(tenant)
                elif record.name == "phase_end":
                    ended.add(tenant)
                    reached.add(tenant)
            if not stopped and plan.until_stopped and reached >= measured:
                self._stop_phase(plan, seq)
                stopped = True
        return PhaseOutput(plan, readers, start_at, time.time_ns(), cut=cut, sent_ns=sent_ns)

    def _stop_phase(self, plan: PhasePlan, seq: int) -> None:
        for t in plan.tenants:
            self._send(self._workers[t], {"cmd": "stop", "seq": seq})

    # -- helpers -------------------------------------------------------------------------
    def _next_line(
        self, deadline: float, what: str, among: Sequence[str] | None = None, quiet: bool = False
    ) -> tuple[str, object] | None:
        """The next line from any worker; at ``deadline``, ``None`` if ``quiet`` else a hang."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if quiet:
                    return None
                hung = [
                    t
                    for t in (among or list(self._workers))
                    if self._workers[t].process.poll() is None
                ]
                tenant = hung[0] if hung else next(iter(self._workers))
                worker = self._workers[tenant]
                raise WorkerError(
                    tenant,
                    f"hung: did not manage {what}; it was stopped. Raise --kts-timeout if the "
                    "workload is just slow",
                    worker.stderr_tail(),
                )
            # A worker that exits is reported by its reader's EOF marker, through this queue.
            with contextlib.suppress(queue.Empty):
                tenant, item, *source = self._lines.get(timeout=min(remaining, 0.5))
                current = self._workers.get(tenant) or self._spares.get(tenant)
                if (
                    source
                    and source[0] is not None
                    and (current is None or source[0] is not current.process)
                ):
                    continue  # from a worker the pool has retired: nobody's business now
                return tenant, item

    def _fail_exited(self, worker: _Worker, what: str) -> None:
        try:
            code = worker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = worker.stderr_tail()
        # From evidence only: CUDA's or torch's own words in this worker's stderr (an exit
        # code alone, or "out of memory" from anything else, proves nothing).
        oom = any(mark in tail for mark in _CUDA_OOM_MARKS)
        detail = f"{what} with exit code {code}"
        if oom:
            detail += ": CUDA out of memory. Use smaller sizes or fewer tenants per GPU"
        elif code is not None and code < 0:
            detail += f" (killed by signal {-code})"
        raise WorkerError(worker.name, detail, tail, oom=oom)

    def _check_error_event(self, worker: _Worker, event: Event) -> None:
        if event.name != "error":
            return
        kind = event.data.get("kind", "exception")
        message = str(event.data.get("message", "")).strip()
        # The exception's type always leads: an empty message must not give an empty headline.
        error_type = str(event.data.get("type") or "").strip()
        headline = ": ".join(p for p in (error_type, message) if p) or "an exception (no message)"
        if kind == "protocol":
            return
        # Give the process a moment to exit, so the error carries its stderr and exit code.
        try:
            worker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if kind == "oom":
            what = f"CUDA out of memory: {headline}. Use smaller sizes or fewer tenants per GPU"
        elif kind == "no_device":
            what = f"{message}. Run with --kts-device cpu, or on a machine with a CUDA GPU"
        else:
            what = f"failed: {headline}"
        raise WorkerError(worker.name, what, worker.stderr_tail(), oom=kind == "oom")

    def _send(self, worker: _Worker, command: dict[str, Any]) -> None:
        stdin = worker.process.stdin
        if stdin is None or worker.process.poll() is not None:
            return
        try:
            stdin.write(json.dumps(command) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def facts(self) -> dict[str, Any]:
        tenants = {name: dict(w.meta) for name, w in self._workers.items()}
        uuids = {m.get("gpu_uuid") for m in tenants.values() if m.get("gpu_uuid")}
        out: dict[str, Any] = {
            "backend": self.name,
            "device": self._device,
            "sharing": self.sharing,
            "tenants": tenants,
            "gpu_uuids": sorted(uuids),
        }
        if self.startup:
            out["startup"] = self.startup  # the last start(): how long, and where it went
        return out

    @property
    def reusable(self) -> bool:
        """Whether a session may keep this backend for later scenarios (a worker pool)."""
        return not self._closed

    def check_colocated(self) -> None:
        """Every tenant on one physical GPU, or a :class:`ColocationError`."""
        colocation.check_one_gpu(
            {name: w.meta.get("gpu_uuid") for name, w in self._workers.items()},
            "Set CUDA_VISIBLE_DEVICES to a single device",
        )
