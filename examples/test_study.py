"""The original study as an SLO suite: an FFT worker next to a GEMM worker on one GPU.

On the GTX 1080 of the study (device-plugin time-slicing) the FFT kept its median while its
p99 went 3.68 -> 6.10 ms (DF 1.66) and the GEMM's went 20.99 -> 24.69 ms (DF 1.18). On a modern
GPU the CUDA events around the FFT no longer see that cost: the wait for a time slice falls
outside the event pair. These tests state what a team would hold the tenants to, and what the
project exists to show. Sizes suit the device: the study's 4096 with short sleeps on a GPU,
small matrices on a CPU so that a 2-core machine runs the suite in a few minutes.
"""

from __future__ import annotations

import pytest

from pytest_kts import assert_df

# Per device: (matrix size, FFT sleep ms, GEMM sleep ms).
SIZES = {"cuda": (4096, 20.0, 30.0), "cpu": (128, 2.0, 3.0)}
# The FFT's SLO per device. On a GPU, the study's 1.3. On a CPU there is nothing to time-slice
# (true DF about 1), but the cores are shared with whatever else runs there: a threshold far
# from the truth keeps the verdict decided the same way on a busy laptop.
FFT_SLO = {"cuda": 1.3, "cpu": 3.0}


@pytest.mark.gpu
def test_fft_next_to_gemm(kts):
    size, fft_sleep, gemm_sleep = SIZES[kts.device]
    fft = kts.tenant("fft", size=size, sleep_ms=fft_sleep)
    gemm = kts.tenant("matmul", size=size, sleep_ms=gemm_sleep)
    slo = FFT_SLO[kts.device]
    if kts.device == "cuda":
        # Adaptive: the runner stops as soon as the FFT's comparison is decided (on an H200
        # after about 30 s of phases). The GEMM runs beside it as background.
        kts.run(slo={fft: slo})
        # On a time-sliced GPU the small tenant pays with its tail: with 95% confidence its
        # p99 grows by more than 30% (the study's SLO of 1.3 would fail; on two H100s 4.46
        # [2.31, 8.62] and 2.38 (>= 1.94), each decided at the first look). What the CUDA
        # events see is the next test's: this run stops as soon as the host clock decides,
        # and on an H100 that left the device clock's interval open (0.97 [0.84, 7.90]).
        assert assert_df(fft, p=99) > 1.3
    else:
        # Two cores for two single-threaded tenants: nothing to time-slice, and no device
        # clock. Both tenants carry an SLO here: the big one keeps its tail next to the small.
        kts.run(slo={fft: slo, gemm: 3.0})
        assert assert_df(gemm, p=99) < 3.0
        assert assert_df(fft, p=99) < slo


@pytest.mark.gpu
@pytest.mark.kts(iterations=600, round_iterations=100)
def test_study_protocol_reports_both_clocks(kts):
    """The fixed protocol (no SLO): figures for the report, both clocks side by side."""
    size, fft_sleep, gemm_sleep = SIZES[kts.device]
    fft = kts.tenant("fft", size=size, sleep_ms=fft_sleep)
    kts.tenant("matmul", size=size, sleep_ms=gemm_sleep)
    result = kts.run()
    tenant = result["fft"]
    # Counts the runner controls: every iteration it asked for was recorded in both phases
    # (warmup trimming, which depends on the data, decides only how many of them count).
    for phase in ("solo", "shared"):
        assert len(tenant.samples.phase(phase)) >= kts.settings.iterations
    # Both clocks where both exist: the CPU has no device clock, and none is invented.
    assert tenant.clocks() == (("host", "device") if kts.device == "cuda" else ("host",))
    if kts.device == "cuda":
        # What the CUDA events around the FFT see: no growth at the median (0.97 [0.96, 0.98],
        # 0.97 [0.94, 1.00] and 0.81 [0.80, 0.82] on three H100s), while the host clock's tail
        # grew (the previous test's gate; this protocol's own host p99 was 4.71 [3.83, 6.09],
        # 4.72 (>= 4.17) and 1.49 (>= 1.06) there). Not at a tail percentile: 600 iterations
        # hold 30 p95 and 6 p99 exceedances, and one solo round whose device time shifted 15%
        # for 70 iterations (at a steady 1980 MHz) left the p95 undecided on one of those
        # H100s (the round's exceedances count as one cluster), where the p99 was 0.94 [0.83,
        # 1.07]. The tail figures are in the report; a gate on the device tail needs the
        # adaptive protocol (an SLO) to buy the samples. Not the host clock's median either:
        # on the study's GTX 1080 the FFT kept it, on one H100 it grew 1.54x.
        assert assert_df(fft, p=50, clock="device") < 1.3
    else:
        # The FFT's median survives co-location on a CPU with nothing to time-slice (the bound
        # is loose: the claim is that the median does not blow up, whatever else runs).
        assert assert_df(fft, p=50) < 3.0
