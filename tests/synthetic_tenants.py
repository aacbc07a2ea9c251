"""Synthetic tenants whose culprit is known: a heavy co-tenant that slows the victim, and a
tiny one that runs on its own schedule and slows nobody.

The victim ``fft`` runs a closed loop (1 ms of work, 10 ms sleep). In the shared phase an
iteration that starts while ``gemm`` (8 ms bursts, 12 ms apart) is busy waits for the rest of
the burst (host clock) and runs 10% slower (device clock). ``tiny`` (0.1 ms every 50 ms) is
busy in the same phase and changes nothing. Epoch stamps are on one clock, as the workers'.
"""

from __future__ import annotations

import numpy as np

from pytest_kts.protocol import Sample

T0 = 1_790_000_000_000_000_000
LAUNCH_MS = 0.05


def _bursts(t0: int, t1: int, busy_ms: float, gap_ms: float, jitter: float, rng) -> list:
    out, t = [], t0 + int(rng.uniform(0, gap_ms) * 1e6)
    while t < t1:
        busy = busy_ms * rng.uniform(1 - jitter, 1 + jitter)
        out.append((t, t + int(busy * 1e6), busy))
        t += int((busy + gap_ms * rng.uniform(1 - jitter, 1 + jitter)) * 1e6)
    return out


def _phase_samples(
    name: str, phase: str, bursts: list, device: bool, launch_ms: float = LAUNCH_MS
) -> list[Sample]:
    return [
        Sample(
            name,
            phase,
            0,
            i,
            s,
            e,
            (e - s) / 1e6,
            (busy - launch_ms) if device else float("nan"),
        )
        for i, (s, e, busy) in enumerate(bursts)
    ]


def scenario(n: int = 600, seed: int = 7, device: bool = True, gemm_harm: bool = True):
    """Samples for fft (victim), gemm (heavy, guilty) and tiny (independent)."""
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    period_ns = int(11e6)
    t = T0
    # Solo phases, one after another.
    for k in range(n):
        work = rng.lognormal(0.0, 0.05)
        e = t + int((work + LAUNCH_MS) * 1e6)
        samples.append(
            Sample("fft", "solo", 0, k, t, e, (e - t) / 1e6, work if device else float("nan"))
        )
        t = e + int(10e6)
    t += int(1e9)
    gemm_solo = _bursts(t, t + n * int(20e6), 8.0, 12.0, 0.1, rng)
    samples += _phase_samples("gemm", "solo", gemm_solo, device)
    t = gemm_solo[-1][1] + int(1e9)
    tiny_solo = _bursts(t, t + n * int(50e6), 0.1, 50.0, 0.2, rng)
    samples += _phase_samples("tiny", "solo", tiny_solo, device, 0.01)
    t = tiny_solo[-1][1] + int(1e9)
    # Shared phase: all three at once.
    span = n * period_ns * 2
    gemm = _bursts(t, t + span, 8.0, 12.0, 0.1, rng)
    tiny = _bursts(t, t + span, 0.1, 50.0, 0.2, rng)
    samples += _phase_samples("gemm", "shared", gemm, device)
    samples += _phase_samples("tiny", "shared", tiny, device, 0.01)
    g_start = np.array([b[0] for b in gemm])
    g_end = np.array([b[1] for b in gemm])
    s = t
    for k in range(2 * n):
        work = rng.lognormal(0.0, 0.05)
        wait = 0.0
        j = np.searchsorted(g_end, s, side="right")
        if gemm_harm and j < len(gemm) and g_start[j] <= s:
            wait = (g_end[j] - s) / 1e6
            work *= 1.1
        e = s + int((work + LAUNCH_MS + wait) * 1e6)
        samples.append(
            Sample("fft", "shared", 0, k, s, e, (e - s) / 1e6, work if device else float("nan"))
        )
        s = e + int(10e6)
    return samples
