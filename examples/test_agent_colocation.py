"""Agent-shaped tenants: a latency-critical decode loop next to a batch prefill, under
time-slicing and under MPS, and the contention matrix of four tenants.

These are the roadmap questions of the original study: "what would MPS do?" and "what about
four tenants?". The committed H100 report (docs/results/) shows the answers measured there.
"""

from __future__ import annotations

import shutil

import pytest

from pytest_kts import assert_df

# (decode size, prefill size, embed size, fft size) per device.
SIZES = {"cuda": (2048, 2048, 768, 4096), "cpu": (128, 128, 64, 128)}
CPU_MODEL = {"layers": "2", "vocab": "4096"}


def _decode_params(device: str) -> dict[str, str]:
    return {"graph": "1"} if device == "cuda" else CPU_MODEL | {"max_seq": "256"}


def _prefill_params(device: str) -> dict[str, str]:
    return (
        {"batch": "8", "seq": "512"}
        if device == "cuda"
        else CPU_MODEL | {"batch": "2", "seq": "32"}
    )


@pytest.mark.gpu
def test_decode_next_to_prefill_timeslice_and_mps(kts):
    decode_size, prefill_size, _, _ = SIZES[kts.device]
    decode = kts.tenant("decode", size=decode_size, sleep_ms=2, params=_decode_params(kts.device))
    kts.tenant("prefill", size=prefill_size, sleep_ms=10, params=_prefill_params(kts.device))
    modes = ["timeslice", "streams"]
    if kts.device == "cuda" and shutil.which("nvidia-cuda-mps-control"):
        modes.append("mps")
    # The decode step keeps its p95 within 10x of solo under every mode we offer (about 3.5x
    # on an H100). Adaptive per mode: each stops once the decode's check is decided. At p95,
    # not p99: a p99 bound rests on the solo tail's runs, and on a lent H100 whose solo tail
    # came in runs (27 exceedances in 7 clusters) the MPS mode's 2.8 against 10 was still
    # undecided after the whole budget of 3200 iterations, where p95 gave 3.35 [3.22, 3.46].
    # On a shared 2-core CPU the streams mode's shared tail comes in runs too (the threads
    # share one GIL): there the bound is far from the 4-5 seen.
    p = 95
    bound = 10 if kts.device == "cuda" else 25
    results = kts.run_modes(modes, slo={decode: bound}, p=p)
    assert list(results) == modes
    for mode in modes:
        assert assert_df(results[mode]["decode"], p=p) < bound


@pytest.mark.gpu
@pytest.mark.kts(iterations=200, round_iterations=50)
def test_four_tenant_contention_matrix(kts):
    decode_size, prefill_size, embed_size, fft_size = SIZES[kts.device]
    cpu = kts.device == "cpu"
    kts.tenant("decode", size=decode_size, sleep_ms=2, params=_decode_params(kts.device))
    kts.tenant("prefill", size=prefill_size, sleep_ms=10, params=_prefill_params(kts.device))
    embed_params = {"layers": "2", "seq": "32", "batch": "2"} if cpu else {}
    kts.tenant("embed", size=embed_size, sleep_ms=5, params=embed_params)
    kts.tenant("fft", size=fft_size, sleep_ms=20 if not cpu else 2)
    # A map for the report, not a gate: 200 iterations a cell cannot bound a p99 (that takes
    # some 370 independent samples a phase), so its cells are point estimates, starred in the
    # heatmap and marked "no bound yet" in the tables. The test asserts the map's shape; a
    # pairing the map shows as costly is gated by an SLO test such as the one above.
    matrix = kts.matrix()
    assert matrix.columns() == ["decode", "prefill", "embed", "fft", "all"]
    for row in matrix.tenants:
        for col in matrix.columns():
            assert (matrix.df(row, col) is None) == (row == col)
