"""A user-defined tenant: a tiny MLP router that picks a tool for a batch of requests.

Pass it to pytest-kts as ``workload="examples.my_agent:build"`` (``module:function``; the module
must be importable from where the tests run). Any function with this signature works:

    def build(device, size, seed, **params) -> step

``build`` makes all state on ``device`` once; ``step()`` launches one iteration's work and
returns without synchronizing (the harness times it and waits for the GPU itself). Params come
from ``kts.tenant(..., params={...})`` as strings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ALLOWED = ("batch", "routes", "dtype")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build(device: torch.device, size: int, seed: int, **params: str) -> Callable[[], object]:
    """Router of width ``size``: ``batch`` request embeddings -> scores over ``routes`` tools."""
    unknown = sorted(set(params) - set(ALLOWED))
    if unknown:
        raise ValueError(f"my_agent: unknown param {unknown[0]!r}; allowed: {', '.join(ALLOWED)}")
    batch = int(params.get("batch", 32))
    routes = int(params.get("routes", 16))
    default_dtype = "bf16" if device.type == "cuda" else "fp32"
    dtype = DTYPES[params.get("dtype", default_dtype)]

    gen = torch.Generator(device=device).manual_seed(seed)

    def weight(rows: int, cols: int) -> torch.Tensor:
        w = torch.randn(rows, cols, generator=gen, device=device) / cols**0.5
        return w.to(dtype)

    requests = torch.randn(batch, size, generator=gen, device=device).to(dtype)
    w1, w2, w3 = weight(4 * size, size), weight(size, 4 * size), weight(routes, size)

    @torch.inference_mode()
    def step() -> torch.Tensor:
        hidden = F.gelu(F.linear(requests, w1))
        scores = F.linear(F.linear(hidden, w2), w3).softmax(dim=-1)
        return scores.argmax(dim=-1)  # the chosen tool per request, left on the device

    return step
