"""What every backend does: start tenants, run a phase, hand back their lines, clean up.

A backend knows how to run workers and collect what they print. It knows nothing of
percentiles, verdicts or pytest: the runner (``pytest_kts.runner``) decides which phases
run and when to stop, and the statistics judge the samples.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar

from pytest_kts.constants import ARRIVALS
from pytest_kts.protocol import LineReader, check_tenant_name


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
        if self.size <= 0:
            raise ValueError(f"tenant {self.name}: size must be positive, got {self.size}")
        if self.sleep_ms < 0:
            raise ValueError(f"tenant {self.name}: sleep_ms must be >= 0, got {self.sleep_ms}")
        if self.warmup < 0:
            raise ValueError(f"tenant {self.name}: warmup must be >= 0, got {self.warmup}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"tenant {self.name}: arrival must be one of {ARRIVALS}")
        if self.arrival != "closed" and not (self.rate_hz and self.rate_hz > 0):
            raise ValueError(f"tenant {self.name}: an open-loop arrival needs rate_hz > 0")

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
