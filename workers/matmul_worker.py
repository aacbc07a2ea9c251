"""The original study's GEMM worker: ``python -m pytest_kts.workers.matmul_worker`` (knobs from the
environment: ITERATIONS 800, MATRIX_SIZE 4096, SLEEP_MS 150, WARMUP 5, PHASE)."""

from __future__ import annotations

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main(workload="matmul"))
