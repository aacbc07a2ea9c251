"""Write synthetic worker logs in the original study's v1 format, with garbage mixed in.

The figures imitate the study (GTX 1080, FFT sleep 100 ms, GEMM sleep 150 ms): FFT p99 about
3.7 ms solo and DF about 1.66 shared; GEMM p99 about 21 ms and DF about 1.18. The garbage is
what real pod logs hold: a framework's warnings, a kubectl --timestamps prefix, broken and
truncated KTS_ lines. tests/test_cli.py asserts the exact counts below.

    python tests/data/study_v1/make_logs.py   # rewrites fft.log and gemm.log next to this file
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ITERATIONS = 400  # per tenant and phase
T0 = 1_714_550_000_000_000_000  # epoch ns, 2024-05-01
SAMPLES = 4 * ITERATIONS
FOREIGN = 3  # fft.log 2, gemm.log 1 (blank lines are not counted)
MALFORMED = 5  # fft.log 4, gemm.log 1


def _phase(
    rng: np.random.Generator,
    tenant: str,
    phase: str,
    start_ns: int,
    median_ms: float,
    sleep_ms: float,
) -> tuple[list[str], int]:
    lat = median_ms * rng.lognormal(0.0, 0.12, ITERATIONS)
    lines, t = [], start_ns
    for i, ms in enumerate(lat):
        end = t + int(ms * 1e6)
        lines.append(f"KTS_APP,v1,{tenant},{i},{t},{end},{ms:.6f},{phase}")
        t = end + int(sleep_ms * 1e6)
    return lines, t


def write_logs(directory: Path, seed: int = 1714) -> list[Path]:
    rng = np.random.default_rng(seed)
    fft_solo, t = _phase(rng, "FFT", "solo", T0, 2.75, 100)
    gemm_solo, t = _phase(rng, "GEMM", "solo", t + 10**9, 15.8, 150)
    shared_at = t + 10**9
    fft_shared, _ = _phase(rng, "FFT", "shared", shared_at, 2.75 * 1.66, 100)
    gemm_shared, _ = _phase(rng, "GEMM", "shared", shared_at + 3 * 10**6, 15.8 * 1.18, 150)
    fft = [
        "Using device: cuda (NVIDIA GeForce GTX 1080)",
        "/usr/lib/python3/dist-packages/torch/fft.py:1: UserWarning: cuFFT plan cache enabled",
        "",
        *fft_solo[:200],
        f"KTS_APP,v1,FFT,17,{T0 + 5},{T0 + 4},2.500000,solo",  # ends before it starts
        "KTS_APP,v1,FFT,18,abc,1714550000000000000,2.500000,solo",  # not a number
        *fft_solo[200:],
        "KTS_APP,v1,FFT,19,1,2",  # two fields short (a phaseless line has five)
        *fft_shared,
        fft_shared[-1][:24],  # the pod was killed mid-line
    ]
    # kubectl logs --timestamps puts an RFC 3339 stamp before every line.
    gemm = [f"2024-05-01T10:00:00.{k:09d}Z {line}" for k, line in enumerate([
        "starting GEMM worker, MATRIX_SIZE=4096",
        *gemm_solo,
        "KTS_APP,v1,GEMM,5,1,2,3.000000,idle",  # no such phase
        *gemm_shared,
    ])]  # fmt: skip
    paths = [directory / "fft.log", directory / "gemm.log"]
    for path, lines in zip(paths, (fft, gemm), strict=True):
        path.write_text("\n".join(lines) + "\n")
    return paths


if __name__ == "__main__":
    for p in write_logs(Path(__file__).parent):
        print(p)
