"""Workloads a tenant can run: the built-ins by name, and any user factory as ``module:function``.

A factory builds its state on the device and returns ``step``, a callable that launches one
iteration's work without synchronizing; the harness times and synchronizes it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

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
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(size, size, dtype=torch.complex64, generator=gen).to(device)
    return graph_safe(lambda: torch.fft.fft2(x))


def build_matmul(device: torch.device, size: int, seed: int, **params: str) -> Step:
    """``torch.matmul`` of two square fp32 matrices (the study's GEMM worker)."""
    _no_params("matmul", params)
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
    return factory
