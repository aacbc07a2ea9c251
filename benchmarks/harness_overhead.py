"""What the measuring costs: the harness's overhead per iteration, and a scenario's fixed cost.

1. Per iteration: the same op (FFT of a square complex64 tensor, sized so one call takes about
   0.25 ms on the GPU) timed by the harness, against a bare loop timed by one CUDA event pair
   around many iterations (no per-iteration events, no synchronization: the op's own cost).
   Reported: the harness's device latency (its event pair) and host latency (launch to observed
   completion, what an agent lives with), each as a median and relative to the bare loop; and
   the CPU time the harness spends between iterations (formatting and writing the line).
   Target: device-clock overhead under 1% of a 0.25 ms kernel.
2. Per scenario: the fixed cost of a local scenario (spawning the workers, importing torch,
   CUDA initialisation, building the workload, warmup) and of one barrier per phase.
   Target: under 3 s.

Usage: ``python benchmarks/harness_overhead.py [--size 4096] [--iterations 2000] [--out FILE]``.
On a machine without CUDA it measures the CPU path and says so.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def per_iteration(size: int, iterations: int, device: str) -> dict[str, float]:
    import torch

    from pytest_kts.protocol import LineReader
    from pytest_kts.workers.harness import Arrival, Clock, Emitter, run_phase
    from pytest_kts.workers.workloads import build_fft

    dev = torch.device(device)
    if device == "cpu":
        torch.set_num_threads(1)  # as a CPU worker runs
    with torch.inference_mode():
        step = build_fft(dev, size, 0)
        for _ in range(20):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        # Bare loop: one event pair around many back-to-back launches.
        bare = []
        for _ in range(5):
            if device == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iterations):
                    step()
                end.record()
                end.synchronize()
                bare.append(start.elapsed_time(end) / iterations)
            else:
                t0 = time.perf_counter_ns()
                for _ in range(iterations):
                    step()
                bare.append((time.perf_counter_ns() - t0) / 1e6 / iterations)
        bare_ms = statistics.median(bare)
        # The harness: per-iteration events, synchronization, a protocol line each.
        stream = io.StringIO()
        emit = Emitter(stream, "fft")
        clock = Clock(cuda=device == "cuda")
        t0 = time.perf_counter_ns()
        run_phase(
            step, clock=clock, emit=emit, tenant="fft", phase="solo", round=0,
            iterations=iterations, arrival=Arrival("closed", 0.0),
        )  # fmt: skip
        wall_ms = (time.perf_counter_ns() - t0) / 1e6 / iterations
    samples = LineReader().feed_all(stream.getvalue().splitlines()).samples
    host = statistics.median(s.host_ms for s in samples)
    out = {
        "bare_ms_per_iteration": bare_ms,
        "harness_host_ms_median": host,
        "host_overhead_pct": 100 * (host - bare_ms) / bare_ms,
        "harness_wall_ms_per_iteration": wall_ms,
        "between_iterations_ms": wall_ms - statistics.mean(s.host_ms for s in samples),
    }
    if device == "cuda":
        dev_ms = statistics.median(s.device_ms for s in samples)
        out["harness_device_ms_median"] = dev_ms
        out["device_overhead_pct"] = 100 * (dev_ms - bare_ms) / bare_ms
    return out


def fixed_cost(device: str, repeats: int = 3) -> dict[str, float]:
    from pytest_kts.backends.base import PhasePlan, TenantSpec
    from pytest_kts.backends.local import LocalBackend

    size = 256
    starts, phases = [], []
    for _ in range(repeats):
        tenants = [
            TenantSpec(name="fft", workload="fft", size=size, warmup=5),
            TenantSpec(name="matmul", workload="matmul", size=size, warmup=5),
        ]
        t0 = time.perf_counter()
        with LocalBackend() as backend:
            backend.start(tenants, device)
            t1 = time.perf_counter()
            backend.run_phase(PhasePlan("shared", 0, {"fft": 1, "matmul": 1}), 60)
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        starts.append(t1 - t0 + (t3 - t2))  # start + close
        phases.append(t2 - t1)  # a phase of one iteration each: barrier and messaging

    # Where the start-up goes: a bare interpreter importing torch, and then initialising CUDA.
    def child(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t

    import_torch = statistics.median(child("import torch") for _ in range(3))
    init = "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"
    cuda_init = statistics.median(child(init) for _ in range(3)) if device == "cuda" else None
    return {
        "python_import_torch_s_median": import_torch,
        "python_import_torch_and_cuda_init_s_median": cuda_init,
        "start_and_close_s_median": statistics.median(starts),
        "start_and_close_s_max": max(starts),
        "one_iteration_phase_s_median": statistics.median(phases),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = args.size if device == "cuda" else min(args.size, 256)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch": torch.__version__,
        "size": size,
        "iterations": args.iterations,
        "per_iteration": per_iteration(size, args.iterations, device),
        "fixed_cost": fixed_cost(device),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
