"""A worker process that can hold any tenant: load one, run its phases, release it.

The process brings up its interpreter, torch and (on a GPU) its CUDA context once. Loading a
tenant builds its workload, settles its device timing (a CUDA graph where it can) and runs its
warmup, so the tenant's first measured iteration always follows its own warmup. Releasing it
drops everything the tenant held and checks that the process is back where it was when it had
held no tenant yet; a process that is not (a factory that keeps a tensor in a global, a thread
it left running) says so and leaves, and the backend starts a fresh one. So a tenant never
measures in a process that still holds an earlier tenant's memory, graphs or threads.

What is checked, against the counters read while the process was blank:

- on CUDA, the caching allocator: bytes allocated and reserved, live blocks, segments (a
  tensor, a cuBLAS work space or a CUDA graph's private pool all show there);
- everywhere, the torch tensors the Python heap still reaches (``gc``; the objects of the
  torch import are frozen out of the scan, which makes it take microseconds) and the Python
  threads alive;
- the process-wide Python state a tenant could change for the next one: the ``time``
  module's clocks and sleep, a profile or trace hook, the collector switched off, the thread
  switch interval, the environment (any change makes the release unclean);
- restored rather than checked: torch's process-wide settings a factory may change (CPU
  threads, default dtype, float32 matmul precision, TF32 and cuDNN flags, grad mode, RNG
  states, the current CUDA stream), so the next tenant starts from a fresh process's values.

What a release cannot give back, and why that is safe: the CUDA context itself and the kernels
an earlier tenant loaded into it (the next tenant's first launch of the same kernel skips the
lazy load, inside its warmup); torch's pool of CUDA streams and its cuBLAS handles, which live
as long as the process (empty once synchronized); memory held by native code outside torch's
allocator on the CPU, which no counter sees.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .harness import Arrival, Clock, Emitter, machine_facts
from .process import cpu_threads
from .workloads import BUILTIN, resolve

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

# Threads of the worker itself (the command reader): not a tenant's leftovers.
OWN_THREAD_PREFIX = "kts-"


def bring_up(requested: str) -> tuple[str, dict[str, float]]:
    """Import torch and choose the device; on CUDA create the context. Returns the device
    and where the time went (``import_s``, ``cuda_s``)."""
    started = time.perf_counter()
    import torch

    imported = time.perf_counter()
    if requested == "cpu":
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    elif requested == "cuda":
        raise LookupError("no CUDA device: torch.cuda.is_available() is False")
    else:
        device = "cpu"
    if device == "cuda":
        # The first allocation creates the context and the allocator: pay it here, once.
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    else:
        # Co-tenants share few cores: one thread each unless told otherwise (a bad
        # KTS_CPU_THREADS is a ValueError naming the variable: a config error).
        torch.set_num_threads(cpu_threads())
    timings = {"import_s": imported - started}
    if device == "cuda":
        timings["cuda_s"] = time.perf_counter() - imported
    return device, timings


@dataclass
class TorchSettings:
    """torch's process-wide settings that a factory may change, as a fresh process has them."""

    values: dict[str, Any]

    @classmethod
    def read(cls, torch: Any, cuda: bool) -> TorchSettings:
        values: dict[str, Any] = {
            "threads": torch.get_num_threads(),
            "dtype": torch.get_default_dtype(),
            "precision": torch.get_float32_matmul_precision(),
            "grad": torch.is_grad_enabled(),
            "cudnn": (
                torch.backends.cudnn.benchmark,
                torch.backends.cudnn.deterministic,
                torch.backends.cudnn.allow_tf32,
            ),
            "rng": torch.get_rng_state(),
        }
        if cuda:
            values["matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
            values["cuda_rng"] = torch.cuda.get_rng_state_all()
        return cls(values)

    def restore(self, torch: Any, cuda: bool) -> None:
        v = self.values
        if torch.get_num_threads() != v["threads"]:
            torch.set_num_threads(v["threads"])
        torch.set_default_dtype(v["dtype"])
        torch.set_float32_matmul_precision(v["precision"])
        torch.set_grad_enabled(v["grad"])
        cudnn = torch.backends.cudnn
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = v["cudnn"]
        torch.set_rng_state(v["rng"])
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = v["matmul_tf32"]
            torch.cuda.set_rng_state_all(v["cuda_rng"])
            torch.cuda.set_stream(torch.cuda.default_stream())


# The process-wide Python state a tenant could change and the next one would measure through:
# the clocks and sleep (replaced by profilers, gevent, test doubles), a profile or trace hook,
# the collector, the thread switch interval, the environment.
_CLOCKS = (
    "perf_counter",
    "perf_counter_ns",
    "monotonic",
    "monotonic_ns",
    "time",
    "time_ns",
    "sleep",
)


def process_state() -> dict[str, object]:
    """A fingerprint of the process-wide Python state a release must find as it was blank."""
    return {
        "clocks": tuple(id(getattr(time, name, None)) for name in _CLOCKS),
        "profile_hook": sys.getprofile() is not None,
        "trace_hook": sys.gettrace() is not None,
        "gc_enabled": gc.isenabled(),
        "switch_interval": sys.getswitchinterval(),
        "environ": hash(frozenset(os.environ.items())),
    }


def counters(torch: Any, cuda: bool) -> dict[str, int]:
    """What the process holds now: live tensors and threads; on CUDA the allocator's counters."""
    gc.collect()
    out = {
        "tensors": sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor)),
        "threads": sum(
            1 for t in threading.enumerate() if not t.name.startswith(OWN_THREAD_PREFIX)
        ),
    }
    if cuda:
        stats = torch.cuda.memory_stats()
        out.update(
            cuda_allocated_bytes=int(stats.get("allocated_bytes.all.current", 0)),
            cuda_reserved_bytes=int(stats.get("reserved_bytes.all.current", 0)),
            cuda_active_blocks=int(stats.get("active.all.current", 0)),
            cuda_segments=int(stats.get("segment.all.current", 0)),
        )
    return out


class Blank:
    """A process as it was before its first tenant: what every release must bring it back to.

    Made once torch (and CUDA) are up: it freezes the objects of the import out of every later
    collection and scan (a full collection with them takes a tenth of a second), and reads the
    counters and settings a release is checked against.
    """

    def __init__(self, torch: Any, cuda: bool) -> None:
        self._torch, self.cuda = torch, cuda
        self.settings = TorchSettings.read(torch, cuda)
        gc.collect()
        gc.freeze()
        self._free()
        self.counters = counters(torch, cuda)
        self.state = process_state()

    def _free(self) -> None:
        """Give back what no tenant holds any more, torch's per-process caches included."""
        torch = self._torch
        if self.cuda:
            torch.cuda.synchronize()
        gc.collect()
        if self.cuda:
            torch.backends.cuda.cufft_plan_cache.clear()
            # cuBLAS and cuBLASLt work spaces live in the allocator, one per handle and stream.
            clear_cublas: Callable[[], None] | None = getattr(
                torch._C, "_cuda_clearCublasWorkspaces", None
            )
            if clear_cublas is not None:
                clear_cublas()
            torch.cuda.empty_cache()

    def release(self) -> dict[str, Any]:
        """Free what the dropped tenants held, restore torch's settings, and compare the
        counters: ``{"clean": bool, "leftover": {counter: [blank, now]}}``."""
        self._free()
        self.settings.restore(self._torch, self.cuda)
        now = counters(self._torch, self.cuda)
        # More than when blank is a leftover (fewer is not: a thread that was there has ended).
        leftover: dict[str, Any] = {
            k: [self.counters[k], v] for k, v in now.items() if v > self.counters.get(k, 0)
        }
        # Changed process-wide state (a replaced clock, a hook, the environment) cannot be
        # given back safely: the process is not clean, and the backend starts a fresh one.
        state = process_state()
        changed = sorted(k for k, v in state.items() if v != self.state[k])
        if changed:
            leftover["process_state"] = ["as blank", "changed: " + " ".join(changed)]
        return {"clean": not leftover, "leftover": leftover}


@dataclass
class Tenant:
    """The tenant a process holds: what its phases run."""

    name: str
    step: Callable[[], object]
    clock: Clock
    arrival: Arrival
    emit: Emitter
    module: str | None = None  # a module:function tenant's module, imported by this load


@dataclass
class Resident:
    """One worker process's device and the tenant it holds (none for a spare)."""

    device: str
    startup: dict[str, float] = field(default_factory=dict)
    tenant: Tenant | None = None

    def __post_init__(self) -> None:
        import torch

        self._torch = torch
        self.cuda = self.device == "cuda"
        self.blank = Blank(torch, self.cuda)

    def load(self, args: argparse.Namespace, emit: Emitter) -> Tenant:
        """Build ``args``' workload, settle its timing, warm it up, and say ``ready``."""
        torch = self._torch
        timings: dict[str, float] = dict(self.startup)
        self.startup = {}  # a process's own start-up counts for its first tenant only
        started = time.perf_counter()
        module = args.workload.partition(":")[0] if args.workload not in BUILTIN else None
        if module in sys.modules:
            module = None  # imported before this tenant (by the worker, or an earlier one)
        factory = resolve(args.workload)
        step = factory(torch.device(self.device), args.size, args.seed, **args.params)
        if self.cuda:
            torch.cuda.synchronize()
        built = time.perf_counter()
        # With the step given, the clock settles how it times it (graph, gate or eager).
        clock = Clock(cuda=self.cuda, step=step)
        prepared = time.perf_counter()
        facts = machine_facts(self.device) | clock.facts()
        emit.meta(facts | {"workload": args.workload, "size": args.size})
        for _ in range(args.warmup):
            clock.time(step, 0)
        arrival = Arrival(args.arrival, args.sleep_ms / 1000.0, args.rate_hz, args.seed)
        timings.update(
            build_s=built - started,
            prepare_s=prepared - built,
            warmup_s=time.perf_counter() - prepared,
        )
        self.tenant = Tenant(args.tenant, step, clock, arrival, emit, module)
        emit.event("ready", {"pid": os.getpid(), "startup": _rounded(timings)})
        return self.tenant

    def release(self) -> dict[str, Any]:
        """Drop the tenant and everything it held; say whether the process is as it was blank."""
        started = time.perf_counter()
        held, self.tenant = self.tenant, None
        name = held.name if held is not None else None
        if held is not None:
            held.emit.flush()
            if held.module is not None:
                # A fresh import for the next tenant of that module, as in a fresh process.
                sys.modules.pop(held.module, None)
        del held
        out = self.blank.release()
        return {"from": name, **out, "release_s": round(time.perf_counter() - started, 6)}


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in timings.items()}
