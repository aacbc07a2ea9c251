"""Every tenant as a CUDA stream of ONE process, each with a stream priority.

The "streams" sharing mode, next to time-slicing (separate processes, :class:`LocalBackend`) and
MPS. One resident ``python -m pytest_kts.workers.streams --serve`` holds every tenant as a
thread on its own ``torch.cuda.Stream``; stream priorities act only between streams of one CUDA
context, which is why this mode exists (see docs/sharing-modes.md).

It is :class:`LocalBackend` with one process instead of one per tenant: every tenant's
``_Worker`` shares that process, commands carry a ``"tenant"`` key, and one reader thread routes
each output line to its tenant by the name the line carries. Only the worker's harness writes
that stream (a tenant's own prints go to its stderr, ``pytest_kts.workers.process``), and a line
naming a tenant the process does not hold is counted as unrouted. Phases, the barrier, keep-running
in shared phases, errors and cleanup are LocalBackend's own code (``close`` sends each tenant's
"exit" to the one process: the first ends it, the rest meet a closed pipe).

In a session's pool the process outlives a scenario: the next one's tenants are loaded into it
(``{"cmd": "load"}``: its interpreter, torch and CUDA context stay; the old tenants' threads
end, what they held is released and checked, the new ones build on new streams). What it cannot
reuse: the environment, one for every tenant, fixed when the process started (a scenario whose
tenants ask for another one gets a fresh process), and a process whose release was not clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import IO, Any

from pytest_kts.backends.base import TenantSpec
from pytest_kts.backends.local import _EOF, LocalBackend, _project_paths, _Worker, spawn_worker
from pytest_kts.constants import STREAMS_WORKER_MODULE
from pytest_kts.errors import ConfigError
from pytest_kts.protocol import LineReader

_OURS = "KTS_"


def tenant_json(spec: TenantSpec, priority: int) -> dict[str, Any]:
    """One tenant as ``workers.streams --tenant-json`` takes it."""
    return {
        "name": spec.name,
        "workload": spec.workload,
        "size": spec.size,
        "sleep_ms": float(spec.sleep_ms),
        "warmup": spec.warmup,
        "arrival": spec.arrival,
        "rate_hz": spec.rate_hz,
        "seed": spec.seed,
        "params": {str(k): str(v) for k, v in spec.params.items()},
        "priority": priority,
    }


class StreamsBackend(LocalBackend):
    """All tenants in one process, one CUDA stream each, with stream priorities.

    ``priorities`` maps tenant -> CUDA stream priority: lower number = higher priority; torch
    2.11 on an H100 offers 0 (the default) down to -3, and clamps values outside the range. A
    tenant it does not name takes its spec's ``priority`` where TenantSpec has one, else 0.
    The priority each stream really got is in :meth:`facts` (``priorities``).

    ``switch_interval_ms`` sets the worker's ``sys.setswitchinterval``: host latency in this
    mode includes waits for the GIL, and Python's default interval is 5 ms. None leaves it.

    Tenants' ``env`` all land in the one process, so two tenants may not set one variable to
    different values (a per-tenant ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` means nothing here).
    """

    name = "streams"

    def __init__(
        self,
        *,
        priorities: Mapping[str, int] | None = None,
        switch_interval_ms: float | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        super().__init__(env=env, python=python, sharing="streams")
        self.priorities: dict[str, int] = {}
        for tenant, priority in (priorities or {}).items():
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise ConfigError(f"stream priority of {tenant!r} must be an integer: {priority!r}")
            self.priorities[tenant] = priority
        if switch_interval_ms is not None and not switch_interval_ms > 0:
            raise ConfigError(f"switch_interval_ms must be > 0, got {switch_interval_ms}")
        self.switch_interval_ms = switch_interval_ms
        self._process: subprocess.Popen[str] | None = None
        self._process_env: dict[str, str] = {}  # the tenants' environment it started with
        self._stderr: IO[str] | None = None
        self._respawned = False
        # Tenants with a phase in progress, and those of them that reached their target: a
        # hang is blamed on one still short of its target (they all share one process).
        self._running: set[str] = set()
        self._reached: set[str] = set()
        self._samples_seen: Counter[str] = Counter()
        # Lines no tenant can be named for (the interpreter's own warnings, native code).
        self.unrouted = LineReader()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, tenants: Sequence[TenantSpec], device: str) -> None:
        names = [t.name for t in tenants]
        if len(set(names)) != len(names):
            raise ValueError(f"tenant names must be unique, got {names}")
        unknown = set(self.priorities) - set(names)
        if unknown:
            raise ConfigError(
                f"stream priorities name tenants the scenario does not declare: {sorted(unknown)}"
            )
        began = time.monotonic()
        self._notes = []
        try:
            env = self._tenants_env(tenants)
            alive = self._process is not None and self._process.poll() is None
            if alive and device == self._device and env == self._process_env:
                if [w.spec for w in self._workers.values()] == list(tenants):
                    self.reused += len(tenants)
                    how = dict.fromkeys(names, "resident")
                else:
                    self._load_all(tenants, device)
                    self.reloaded += 1
                    how = dict.fromkeys(names, "reloaded")
            else:
                self._stop_all()
                self._device = device
                self._spawn_all(tenants, device)
                how = dict.fromkeys(names, "spawned")
            self._respawned = False
            self._await_ready(how)
            if self._respawned:
                how = dict.fromkeys(names, "spawned")
            self.startup = self._startup_facts(names, how, time.monotonic() - began)
        except BaseException:
            self.close()
            raise

    def _load_all(self, tenants: Sequence[TenantSpec], device: str) -> None:
        """Hand the one resident process another scenario's tenants."""
        assert self._process is not None and self._stderr is not None
        self._running.clear()
        self._reached.clear()
        self._samples_seen.clear()
        # The new names before the command: the router files each line by the name it carries.
        self._workers = {s.name: _Worker(s, self._process, self._stderr) for s in tenants}
        sent_ns = time.time_ns()
        for worker in self._workers.values():
            worker.sent_ns = sent_ns
        command = {
            "cmd": "load",
            "tenants": [tenant_json(spec, self.priority_of(spec)) for spec in tenants],
        }
        LocalBackend._send(self, next(iter(self._workers.values())), command)

    def _stop_all(self) -> None:
        """Stop the process and forget its tenants (a new one takes their place)."""
        workers = list(self._workers.values())
        self._workers.clear()
        if not workers:
            return
        self._stop_worker(workers[0])
        self._process = None

    def _replace_unclean(self, worker: _Worker, released: Mapping[str, Any]) -> None:
        """The process still held something after its release: a fresh one for every tenant."""
        specs = [w.spec for w in self._workers.values() if w.spec is not None]
        leftover = ", ".join(
            f"{k} {v[0]} -> {v[1]}" for k, v in dict(released.get("leftover") or {}).items()
        )
        self._notes.append(
            f"the streams process still held something of {released.get('from')} after its "
            f"release ({leftover}): retired, the tenants started in a fresh one"
        )
        self._stop_all()
        self._spawn_all(specs, self._device)
        self._respawned = True

    def priority_of(self, spec: TenantSpec) -> int:
        if spec.name in self.priorities:
            return self.priorities[spec.name]
        # Read off the spec if TenantSpec grows a priority field; 0 (the default) otherwise.
        return int(getattr(spec, "priority", 0) or 0)

    def _tenants_env(self, tenants: Sequence[TenantSpec]) -> dict[str, str]:
        merged: dict[str, str] = {}
        owner: dict[str, str] = {}
        for spec in tenants:
            for key, value in spec.env.items():
                if key in merged and merged[key] != value:
                    raise ConfigError(
                        f"tenants {owner[key]!r} and {spec.name!r} set {key} to different "
                        "values, but under --kts-sharing streams they share one process and "
                        "one environment. Use timeslice or mps for per-tenant environments"
                    )
                merged[key], owner[key] = value, spec.name
        return merged

    def _spawn_all(self, tenants: Sequence[TenantSpec], device: str) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env.update(self._tenants_env(tenants))
        paths = [*_project_paths(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["KTS_PARENT_PID"] = str(os.getpid())
        stderr_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
            "w+", prefix="kts-streams-", suffix=".stderr", delete=False
        )
        argv = [self.python, "-m", STREAMS_WORKER_MODULE, "--serve", "--device", device]
        if self.switch_interval_ms is not None:
            argv += ["--switch-interval-ms", repr(float(self.switch_interval_ms))]
        for spec in tenants:
            argv += ["--tenant-json", json.dumps(tenant_json(spec, self.priority_of(spec)))]
        sent_ns = time.time_ns()
        env["KTS_SPAWNED_NS"] = str(sent_ns)
        try:
            process = spawn_worker(argv, env, stderr_file)
        except BaseException:
            stderr_file.close()
            raise
        finally:
            os.unlink(stderr_file.name)  # the worker holds its own descriptor (see local.py)
        self._process, self._stderr = process, stderr_file
        self._process_env = self._tenants_env(tenants)
        # One _Worker per tenant, all on the one process: LocalBackend's phase loop, error
        # checks and close() then work per tenant unchanged.
        for spec in tenants:
            self._workers[spec.name] = _Worker(spec, process, stderr_file, sent_ns=sent_ns)
        threading.Thread(
            target=self._route, args=(process.stdout, process), daemon=True, name="kts-streams"
        ).start()

    # -- output --------------------------------------------------------------------------
    def _tenant_of(self, line: str) -> str | None:
        at = line.find(_OURS)
        if at < 0:
            return None
        # KTS_APP,v2,{tenant},... / KTS_META,v2,{tenant},... / KTS_EVENT,v2,{tenant},...
        fields = line[at:].split(",", 3)
        if len(fields) >= 3 and fields[2] in self._workers:
            return fields[2]
        return None

    def _track(self, tenant: str, line: str) -> None:
        """Which tenants are measuring; read off their events as the lines pass."""
        if line.startswith("KTS_APP,"):
            self._samples_seen[tenant] += 1
        elif line.startswith("KTS_EVENT,"):
            name = line.split(",", 4)[3] if line.count(",") >= 4 else ""
            if name == "target_reached":
                self._reached.add(tenant)
            elif name == "phase_end":
                self._running.discard(tenant)

    def _route(self, stream: IO[str] | None, process: subprocess.Popen[str]) -> None:
        assert stream is not None
        try:
            for line in stream:
                tenant = self._tenant_of(line)
                if tenant is None:
                    self.unrouted.feed(line)
                    continue
                self._track(tenant, line)
                self._lines.put((tenant, line, process))
        except (OSError, ValueError):
            pass
        finally:
            # The process is gone for every tenant; LocalBackend fails the phase on the first
            # EOF it sees, so one is enough. Name a tenant that was measuring, if any was.
            blame = self._suspects() or list(self._workers) or [""]
            self._lines.put((blame[0], _EOF, process))

    def _suspects(self) -> list[str]:
        running = [t for t in self._workers if t in self._running]
        behind = [t for t in running if t not in self._reached]
        return behind or running

    # -- LocalBackend hooks --------------------------------------------------------------
    def _send(self, worker: _Worker, command: dict[str, Any]) -> None:
        if command.get("cmd") == "run":
            self._running.add(worker.name)
            self._reached.discard(worker.name)
        super()._send(worker, {**command, "tenant": worker.name})

    def _next_line(
        self, deadline: float, what: str, among: Sequence[str] | None = None, quiet: bool = False
    ) -> tuple[str, object] | None:
        if among is not None:
            # LocalBackend blames the first tenant whose process is alive: here that is every
            # tenant, so point it at one still short of its target.
            suspects = [t for t in self._suspects() if t in among]
            among = suspects + [t for t in among if t not in suspects]
        return super()._next_line(deadline, what, among, quiet)

    def _fail_exited(self, worker: _Worker, what: str) -> None:
        if len(self._workers) > 1:
            # Which tenant took the process down is unknown when it died without a word (a
            # segfault): say that every tenant went with it.
            what += f" (one process held every tenant: {', '.join(self._workers)})"
        super()._fail_exited(worker, what)

    def facts(self) -> dict[str, Any]:
        facts = super().facts()
        facts["priorities"] = {
            name: w.meta.get("priority", self.priority_of(w.spec) if w.spec else 0)
            for name, w in self._workers.items()
        }
        facts["pid"] = self._process.pid if self._process is not None else None
        if self.unrouted.lines:
            facts["unrouted_lines"] = self.unrouted.accounting()
        return facts
