"""Who took the tail, on a GPU: the scenarios of issue 10 as a team's suite would write them.

    python -m pytest benchmarks/gpu/test_attribution.py --kts-device cuda --kts-report OUT -v

Each test asserts what the attribution must show; the report (results.md, summary.json,
plots/*/tail_attribution_*.png) records the wait share, the blamed co-tenant and its lift.
"""

from __future__ import annotations

import pytest

from pytest_kts import assert_df


@pytest.mark.gpu
def test_fft_tail_is_blamed_on_the_gemm_and_is_mostly_waiting(kts):
    fft = kts.tenant("fft", size=2048, sleep_ms=5)
    kts.tenant("matmul", size=8192, sleep_ms=20)
    result = kts.run(slo={fft: 1.3})
    assert assert_df(fft, p=99) > 1.3
    blame = result["fft"].attribution().top()
    assert blame is not None and blame.cotenant == "matmul"
    split = result["fft"].wait_split()
    assert split is not None and split.dominant() == "waiting"


@pytest.mark.gpu
def test_the_heavy_neighbour_is_blamed_not_the_tiny_one(kts):
    fft = kts.tenant("fft", size=2048, sleep_ms=5)
    kts.tenant("matmul", size=8192, sleep_ms=20)
    kts.tenant("tiny", "matmul", size=64, sleep_ms=50)
    result = kts.run(slo={fft: 1.3})
    assert assert_df(fft, p=99) > 1.3
    shares = result["fft"].attribution().shares()
    assert shares["matmul"] > shares["tiny"]
    assert result["fft"].attribution().top().cotenant == "matmul"


@pytest.mark.gpu
def test_device_clock_p50_is_the_same_solo_and_shared(kts):
    # With the launch gap out of the event pair, the FFT's execution time does not depend on
    # whether the GPU was idle when its kernels were issued (clocks steady: see telemetry).
    fft = kts.tenant("fft", size=2048, sleep_ms=5)
    kts.tenant("matmul", size=4096, sleep_ms=15)
    result = kts.run(slo={fft: 1.3})
    solo = result["fft"].summary("solo", clock="device")
    shared = result["fft"].summary("shared", clock="device")
    assert solo is not None and shared is not None
    assert abs(shared.p50 / solo.p50 - 1) < 0.05, (solo.p50, shared.p50)
