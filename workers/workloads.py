"""Workloads a tenant can run: the built-ins by name, and any user factory as ``module:function``.

A factory builds its state on the device and returns ``step``, a callable that launches one
iteration's work without synchronizing; the harness times and synchronizes it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported by the factories, not here: the test side (no torch needed) imports this
# module to check tenants before anything spawns.

Step = Callable[[], object]
Factory = Callable[..., Step]

# Built-ins by name; the agent-shaped models live in the agents module beside this one.
_HERE = __name__.rpartition(".")[0]  # "pytest_kts.workers" when installed
BUILTIN: dict[str, str] = {
    "fft": f"{_HERE}.workloads:build_fft",
    "matmul": f"{_HERE}.workloads:build_matmul",
    "gemm": f"{_HERE}.workloads:build_matmul",
    "decode": f"{_HERE}.agents:build_decode",
    "prefill": f"{_HERE}.agents:build_prefill",
    "embed": f"{_HERE}.agents:build_embed",
}

# The params each built-in takes (values arrive as strings; the workload parses them).
_LLAMA_KEYS = ("layers", "heads", "kv_heads", "ffn", "vocab", "dtype")
DECODE_PARAMS = (*_LLAMA_KEYS, "max_seq", "graph")
PREFILL_PARAMS = (*_LLAMA_KEYS, "batch", "seq")
EMBED_PARAMS = ("layers", "heads", "seq", "batch", "dtype")
BUILTIN_PARAMS: dict[str, tuple[str, ...]] = {
    "fft": (),
    "matmul": (),
    "gemm": (),
    "decode": DECODE_PARAMS,
    "prefill": PREFILL_PARAMS,
    "embed": EMBED_PARAMS,
}

# Param values arrive as strings. These parse the built-ins' own (torch-free, so check() can
# refuse a bad value before anything spawns; the agents module parses with the same functions).
MAX_PARAM_INT = 1 << 20
FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True}
FLAG_VALUES |= {"0": False, "false": False, "no": False, "off": False}
DTYPE_NAMES = ("bf16", "fp16", "fp32")


def parse_positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PARAM_INT:
        raise ValueError(f"expected an integer from 1 to {MAX_PARAM_INT}, got {raw!r}")
    return value


def parse_flag(raw: str) -> bool:
    try:
        return FLAG_VALUES[raw.lower()]
    except KeyError:
        raise ValueError(f"expected one of {'/'.join(FLAG_VALUES)}, got {raw!r}") from None


def parse_dtype_name(raw: str) -> str:
    if raw.lower() not in DTYPE_NAMES:
        raise ValueError(f"expected one of {', '.join(DTYPE_NAMES)}, got {raw!r}")
    return raw.lower()


PARAM_PARSERS: dict[str, Callable[[str], object]] = {
    **dict.fromkeys(
        ("layers", "heads", "kv_heads", "ffn", "vocab", "max_seq", "batch", "seq"),
        parse_positive_int,
    ),
    "dtype": parse_dtype_name,
    "graph": parse_flag,
}

# The original study's closed-loop sleeps, used when a worker is started without --sleep-ms.
DEFAULT_SLEEP_MS: dict[str, float] = {"fft": 100.0, "matmul": 150.0, "gemm": 150.0}


def graph_safe(step: Step) -> Step:
    """Mark a step whose state lives on the device, so the harness may capture it in a CUDA
    graph and replay it (no Python side effects are skipped by a replay)."""
    step.kts_graph_safe = True  # type: ignore[attr-defined]
    return step


def _no_params(name: str, params: dict[str, Any]) -> None:
    if params:
        raise ValueError(f"workload {name!r} takes no params, got {sorted(params)}")


def build_fft(device: torch.device, size: int, seed: int, **params: str) -> Step:
    """``torch.fft.fft2`` of a square complex64 tensor (the study's FFT worker)."""
    _no_params("fft", params)
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(size, size, dtype=torch.complex64, generator=gen).to(device)
    return graph_safe(lambda: torch.fft.fft2(x))


def build_matmul(device: torch.device, size: int, seed: int, **params: str) -> Step:
    """``torch.matmul`` of two square fp32 matrices (the study's GEMM worker)."""
    _no_params("matmul", params)
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(size, size, dtype=torch.float32, generator=gen).to(device)
    b = torch.randn(size, size, dtype=torch.float32, generator=gen).to(device)
    return graph_safe(lambda: torch.matmul(a, b))


def resolve(workload: str) -> Factory:
    """The factory for a built-in name or a ``module:function`` reference."""
    target = BUILTIN.get(workload, workload)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"unknown workload {workload!r}: use one of {sorted(BUILTIN)} or 'module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"workload {workload!r}: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"workload {workload!r}: {module_name!r} has no callable {attr!r}")
    maker: Factory = factory
    return maker


def check(
    workload: str, params: Mapping[str, object] | None = None, *, importable: bool = True
) -> None:
    """Raise ``ValueError`` (listing what is allowed) for a workload or param no worker would
    accept; cheap and torch-free, so the test side calls it before spawning anything.

    A ``module:function`` workload is checked only for being findable here (``importable``;
    off when the workers run elsewhere, e.g. in a cluster's image): importing it would import
    torch, and its params are its own business.
    """
    params = dict(params or {})
    if workload in BUILTIN_PARAMS:
        allowed = BUILTIN_PARAMS[workload]
        unknown = sorted(set(params) - set(allowed))
        listed = ", ".join(allowed) if allowed else "none"
        if unknown:
            raise ValueError(
                f"workload {workload!r}: unknown param {unknown[0]!r}; allowed params: {listed}"
            )
        for key, raw in params.items():
            try:
                PARAM_PARSERS[key](str(raw).strip())
            except ValueError as exc:
                raise ValueError(
                    f"workload {workload!r}: param {key!r}: {exc} (allowed params: {listed})"
                ) from None
        return
    module_name, sep, attr = workload.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"unknown workload {workload!r}: use one of {', '.join(BUILTIN_PARAMS)} "
            "or 'module:function'"
        )
    if importable and not _findable(module_name):
        raise ValueError(
            f"workload {workload!r}: no module {module_name!r} on the path (a module:function "
            "workload must be importable from where the tests run)"
        )


def _findable(module_name: str) -> bool:
    # A worker runs with ``python -m`` from the current directory, which puts it on its path.
    for extra in ([], [os.getcwd()]):
        sys.path[:0] = extra
        try:
            if importlib.util.find_spec(module_name) is not None:
                return True
        except (ImportError, ValueError):
            pass
        finally:
            del sys.path[: len(extra)]
    return False
