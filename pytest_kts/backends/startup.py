"""What a backend's start-up record says, in one line for the terminal and results.md.

The local backend records, for each ``start()``, its wall time and per tenant how it got a
worker (``spawned``: a new process; ``reloaded``: a resident process given this tenant;
``resident``: its worker from an earlier scenario, unchanged) and where the time went, as the
worker measured it. The record travels in ``ScenarioResult.backend["startup"]`` (and so in
summary.json).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The stages of a start, in order, as the worker names them (seconds).
STAGES = {
    "interpreter_s": "interpreter",
    "import_s": "import torch",
    "cuda_s": "CUDA context",
    "release_s": "release",
    "build_wait_s": "waiting for another tenant's build",
    "build_s": "build",
    "prepare_s": "device timing",
    "warmup_s": "warmup",
}
HOWS = ("spawned", "reloaded", "resident")


def describe(startup: Mapping[str, Any] | None) -> str | None:
    """``start-up 2.41 s: fft, gemm spawned in parallel (slowest, fft: ...)``, or None."""
    if not startup or "tenants" not in startup:
        return None
    tenants: Mapping[str, Mapping[str, Any]] = startup["tenants"]
    parts = []
    for how in HOWS:
        names = [n for n, t in tenants.items() if t.get("how") == how]
        if not names:
            continue
        text = f"{', '.join(names)} {how}"
        if how != "resident":
            slowest = max(names, key=lambda n: float(tenants[n].get("total_s") or 0.0))
            stages = ", ".join(
                f"{label} {float(tenants[slowest][key]):.2f}"
                for key, label in STAGES.items()
                if tenants[slowest].get(key) is not None
            )
            who = f"in parallel; slowest, {slowest}: " if len(names) > 1 else ""
            text += f" ({who}{stages} s)"
        parts.append(text)
    spares = int(startup.get("spares_started") or 0)
    if spares:
        parts.append(f"{spares} spare process{'es' if spares > 1 else ''} started beside them")
    line = f"start-up {float(startup.get('wall_s') or 0.0):.2f} s: " + "; ".join(parts)
    for note in startup.get("notes") or []:
        line += f"; {note}"
    return line
