"""What every backend does: start tenants, run a phase, hand back their lines, clean up.

A backend knows how to run workers and collect what they print. It knows nothing of
percentiles, verdicts or pytest: the runner (``pytest_kts.runner``) decides which phases
run and when to stop, and the statistics judge the samples.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from types import TracebackType
from typing import Any, ClassVar

from pytest_kts.constants import ARRIVALS
from pytest_kts.protocol import LineReader, check_tenant_name

# Bounds that keep a tenant meaningful; beyond them a worker would die or measure nothing.
MAX_SIZE = 2**31 - 1  # torch's int32 shapes
MAX_SLEEP_MS = 60_000.0  # a minute between iterations: a p99 needs hundreds of them
MIN_RATE_HZ, MAX_RATE_HZ = 1 / 60, 100_000.0  # the same minute, and 10 us apart
MAX_WARMUP = 100_000
MAX_SEED = 2**63 - 1
MAX_PRIORITY = 2**31 - 1


def _integer(tenant: str, what: str, value: object, lo: int, hi: int) -> int:
    number = int(value) if isinstance(value, Integral) and not isinstance(value, bool) else None
    if number is None or not lo <= number <= hi:
        raise ValueError(
            f"tenant {tenant!r}: {what} must be an integer from {lo} to {hi}, got {value!r}"
        )
    return number


def _number(tenant: str, what: str, value: object, lo: float, hi: float) -> float:
    number: float | int | None = None
    if isinstance(value, Integral) and not isinstance(value, bool):
        number = int(value)  # compared as an int: one too large for a float is just too large
    elif isinstance(value, Real):
        number = float(value)
    if number is None or not lo <= number <= hi:  # NaN fails the comparison
        raise ValueError(
            f"tenant {tenant!r}: {what} must be a number from {lo:g} to {hi:g}, got {value!r}"
        )
    return float(number)


@dataclass(frozen=True)
class TenantSpec:
    """One tenant as a worker process will run it.

    ``workload`` names a built-in workload (``fft``, ``matmul``, ...) or a user factory as
    ``module:function``. ``arrival`` is ``closed`` (run, then sleep ``sleep_ms``) or an open
    loop at ``rate_hz`` (``constant`` or ``poisson``) whose latency counts from the intended
    start, queueing included.
    """

    name: str
    workload: str
    size: int
    sleep_ms: float = 0.0
    warmup: int = 5
    arrival: str = "closed"
    rate_hz: float | None = None
    seed: int = 0
    # CUDA stream priority under --kts-sharing streams (lower is higher; clamped to the range).
    priority: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_tenant_name(self.name)
        object.__setattr__(self, "size", _integer(self.name, "size", self.size, 1, MAX_SIZE))
        sleep_ms = _number(self.name, "sleep_ms", self.sleep_ms, 0.0, MAX_SLEEP_MS)
        object.__setattr__(self, "sleep_ms", sleep_ms)
        _integer(self.name, "warmup", self.warmup, 0, MAX_WARMUP)
        _integer(self.name, "seed", self.seed, 0, MAX_SEED)
        _integer(self.name, "priority", self.priority, -MAX_PRIORITY, MAX_PRIORITY)
        if self.arrival not in ARRIVALS:
            raise ValueError(f"tenant {self.name!r}: arrival must be one of {ARRIVALS}")
        if self.rate_hz is not None:
            rate = _number(self.name, "rate_hz", self.rate_hz, MIN_RATE_HZ, MAX_RATE_HZ)
            object.__setattr__(self, "rate_hz", rate)
        if self.arrival != "closed" and self.rate_hz is None:
            raise ValueError(f"tenant {self.name!r}: an open-loop arrival needs rate_hz > 0")
        for key, value in self.params.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in f"{key}{value}":
                raise ValueError(f"tenant {self.name!r}: param {key!r} is not a usable name")
        for key, value in self.env.items():
            if (
                not (isinstance(key, str) and isinstance(value, str))
                or "=" in key
                or not key
                or "\0" in f"{key}{value}"  # no process can be given it
            ):
                raise ValueError(
                    f"tenant {self.name!r}: env must map names to strings, got {key!r}: {value!r}"
                )

    def worker_argv(self, device: str) -> list[str]:
        """Arguments after ``python -m pytest_kts.workers.run``; the same for a local process and
        a Job."""
        argv = [
            "--tenant", self.name,
            "--workload", self.workload,
            "--size", str(self.size),
            "--sleep-ms", repr(float(self.sleep_ms)),
            "--warmup", str(self.warmup),
            "--arrival", self.arrival,
            "--seed", str(self.seed),
            "--device", device,
        ]  # fmt: skip
        if self.rate_hz:
            argv += ["--rate-hz", repr(float(self.rate_hz))]
        for key, value in sorted(self.params.items()):
            argv += ["--param", f"{key}={value}"]
        return argv


@dataclass(frozen=True)
class PhasePlan:
    """One phase of one round: which tenants run, how many iterations each must record, and
    how long the phase may last.

    A tenant's target may be 0: in a shared phase that makes it a *background* co-tenant,
    which runs for as long as the phase lasts and never lengthens it. A shared phase ends
    when every tenant with a positive target has reached it; until then every tenant keeps
    running (its later samples are kept too), so that no tenant's shared samples are taken
    while a co-tenant has gone quiet. ``max_seconds`` is the phase's time share in wall time,
    counted from when the backend starts the phase (its start barrier included): when it runs
    out, the backend stops every tenant at its next iteration, the phase ends below its
    targets, and its samples are kept (``PhaseOutput.cut``).
    """

    phase: str  # "solo" | "shared"
    round: int
    iterations: Mapping[str, int]  # tenant -> target (0: background, runs until the phase ends)
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.phase not in ("solo", "shared"):
            raise ValueError(f"phase must be solo or shared, got {self.phase!r}")
        if any(int(n) < 0 for n in self.iterations.values()):
            raise ValueError(f"iteration targets must be >= 0, got {dict(self.iterations)}")
        if not any(int(n) > 0 for n in self.iterations.values()):
            raise ValueError("a phase needs at least one tenant with a positive target")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(self.iterations)

    @property
    def measured(self) -> tuple[str, ...]:
        """Tenants whose target ends the phase (the others are background)."""
        return tuple(t for t, n in self.iterations.items() if int(n) > 0)

    @property
    def until_stopped(self) -> bool:
        """Whether tenants keep running past their targets until the phase is stopped."""
        return self.phase == "shared" and len(self.iterations) > 1


@dataclass
class PhaseOutput:
    """What a phase produced: per tenant, every line accounted for; and its wall window.

    ``cut`` is true when the phase's time share ended it before every target was reached;
    ``sent_ns`` is when the backend started the phase (before the start barrier), so
    ``ended_ns - sent_ns`` is the phase's whole cost in wall time.
    """

    plan: PhasePlan
    readers: dict[str, LineReader]
    started_ns: int
    ended_ns: int
    cut: bool = False
    sent_ns: int | None = None

    @property
    def seconds(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9

    @property
    def wall_seconds(self) -> float:
        """Seconds from sending the phase to its end: what a budget is charged."""
        began = self.started_ns if self.sent_ns is None else min(self.sent_ns, self.started_ns)
        return (self.ended_ns - began) / 1e9


class Backend(abc.ABC):
    """Runs tenants' workers. Use as a context manager: ``close`` always runs.

    Besides the three abstract methods, a backend says what else it offers, so that callers
    ask it instead of probing for attributes: :meth:`check_colocated` (with
    :attr:`checks_colocation` saying whether it verifies anything) and :attr:`reusable`.
    The defaults promise nothing: no check, no reuse.
    """

    name: str = "abstract"
    #: Whether :meth:`check_colocated` verifies anything (by the GPU UUID each worker prints).
    checks_colocation: ClassVar[bool] = False
    #: Seconds a tenant's start (interpreter, import, CUDA context, build, warmup) may take
    #: before it counts as hung; the runner sets it from ``--kts-timeout`` before ``start``.
    start_timeout_s: float = 300.0

    @abc.abstractmethod
    def start(self, tenants: Sequence[TenantSpec], device: str) -> None:
        """Prepare every tenant (a local backend starts resident workers and waits until ready)."""

    @abc.abstractmethod
    def run_phase(self, plan: PhasePlan, timeout_s: float) -> PhaseOutput:
        """Run one phase to completion; a failed worker raises WorkerError."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop everything this backend started. Idempotent; safe after Ctrl-C."""

    def facts(self) -> dict[str, Any]:
        """What the backend knows about where tenants ran (GPU UUIDs, nodes, pods)."""
        return {"backend": self.name}

    def check_colocated(self) -> None:
        """Raise :class:`~pytest_kts.errors.ColocationError` if the tenants of a shared phase
        so far ran on different GPUs. The runner calls it after the first round.

        The base class checks nothing (:attr:`checks_colocation` is false): a backend that can
        tell where its tenants ran overrides both.
        """
        return None

    @property
    def reusable(self) -> bool:
        """Whether a session may keep this backend, its tenants resident, for a later scenario
        that declares the same tenants (a worker pool). The base class says no."""
        return False

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
