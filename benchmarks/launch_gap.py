"""How much of the device clock is the host's launch gap, per device timing mode.

For each op (FFT 2048 and 4096 complex64, matmul 4096 fp32) and each timing mode of the
harness's Clock (eager, gated, graph), a solo closed loop runs through the real harness
(``workers.harness.run_phase``, lines written and parsed back); its device-clock p50 is set
against a reference of the op's execution alone: one event pair around N launches queued
behind a host-released gate (so the GPU runs them back to back with the queue full), divided
by N. A CUDA graph of N launches is a second reference where the gate is not available.

Reported per op and mode: device p50 and its bias against the reference (us and % of the
reference), host p50 (what the agent lives with) against the eager host p50, and the host
time spent issuing one step. Target: |bias| under 1% of a 0.25 ms kernel (2.5 us).

    python benchmarks/launch_gap.py OUT_DIR [--iterations 2000] [--quick]

writes OUT_DIR/launch_gap.json and OUT_DIR/launch_gap.md. Without CUDA it runs the CPU path
(no device clock, nothing to compare) so that the script itself is tested, and says so.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_US = 2.5  # 1% of a 0.25 ms kernel
OPS = (("fft", 2048), ("fft", 4096), ("matmul", 4096))
MODES = ("eager", "gated", "graph")


def _build(torch: Any, workload: str, size: int, device: str) -> Any:
    from pytest_kts.workers.workloads import resolve

    return resolve(workload)(torch.device(device), size, 0)


def reference_ms(torch: Any, step: Any, n: int) -> dict[str, float | str | None]:
    """Execution time per call with the queue full: gated batch, and a graph of n calls."""
    from pytest_kts.workers.harness import HostGate

    out: dict[str, float | str | None] = {}
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    try:
        gate = HostGate(torch)
        samples = []
        for _ in range(5):
            gate.hold()
            start.record()
            for _ in range(n):
                step()
            end.record()
            gate.release()
            end.synchronize()
            samples.append(start.elapsed_time(end) / n)
        out["gated_batch_ms"] = statistics.median(samples)
    except Exception as exc:  # no stream memory ops here: the graph reference stands alone
        out["gated_batch_ms"] = None
        out["gated_batch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                step()
        samples = []
        for _ in range(5):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / n)
        out["graph_batch_ms"] = statistics.median(samples)
    except Exception as exc:
        out["graph_batch_ms"] = None
        out["graph_batch_error"] = f"{type(exc).__name__}: {exc}"
    return out


def harness_run(
    torch: Any, workload: str, size: int, device: str, mode: str, iterations: int
) -> dict[str, Any]:
    """A solo phase through the real harness in one timing mode; medians of both clocks."""
    from pytest_kts.protocol import LineReader
    from pytest_kts.workers.harness import Arrival, Clock, Emitter, run_phase

    step = _build(torch, workload, size, device)
    clock = Clock(cuda=device == "cuda", step=step, timing=mode)
    for _ in range(20):
        clock.time(step, 0)
    buf = io.StringIO()
    emit = Emitter(buf, workload)
    run_phase(
        step, clock=clock, emit=emit, tenant=workload, phase="solo", round=0,
        iterations=iterations, arrival=Arrival("closed", 0.0),
    )  # fmt: skip
    reader = LineReader().feed_all(buf.getvalue().splitlines())
    samples = reader.samples[iterations // 10 :]  # the first tenth as warmup
    host = [s.host_ms for s in samples]
    device_ms = [s.device_ms for s in samples if s.device_ms == s.device_ms]
    # The host time spent issuing one step (no synchronization inside the measured span).
    issue = []
    for _ in range(200):
        t0 = time.perf_counter_ns()
        step()
        issue.append((time.perf_counter_ns() - t0) / 1e3)
        if device == "cuda":
            torch.cuda.synchronize()
    return {
        "timing_used": clock.facts(),
        "n": len(samples),
        "device_p50_ms": statistics.median(device_ms) if device_ms else None,
        "host_p50_ms": statistics.median(host),
        "issue_p50_us": statistics.median(issue),
    }


def machine(torch: Any, device: str) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "device": device,
    }
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name()
        facts["cuda"] = torch.version.cuda
        if shutil.which("nvidia-smi"):
            q = "--query-gpu=driver_version,clocks.sm,clocks.max.sm,uuid"
            facts["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.strip()
    return facts


def run(out_dir: Path, iterations: int, quick: bool) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ops = OPS if not quick else (("fft", 64), ("matmul", 64))
    results: list[dict[str, Any]] = []
    for workload, size in ops:
        entry: dict[str, Any] = {"op": f"{workload} {size}", "modes": {}}
        ref = None
        if device == "cuda":
            step = _build(torch, workload, size, device)
            entry["reference"] = reference_ms(torch, step, 50)
            ref = entry["reference"].get("gated_batch_ms") or entry["reference"].get(
                "graph_batch_ms"
            )
        for mode in MODES if device == "cuda" else ("eager",):
            r = harness_run(torch, workload, size, device, mode, iterations)
            if ref and r["device_p50_ms"] is not None:
                bias_us = (r["device_p50_ms"] - ref) * 1e3
                r["bias_us"] = bias_us
                r["bias_pct_of_reference"] = 100 * bias_us / (ref * 1e3)
                r["meets_target"] = abs(bias_us) < TARGET_US
            entry["modes"][mode] = r
        eager_host = entry["modes"]["eager"]["host_p50_ms"]
        for r in entry["modes"].values():
            r["host_vs_eager_pct"] = 100 * (r["host_p50_ms"] / eager_host - 1)
        results.append(entry)
    report = {
        "machine": machine(torch, device),
        "iterations": iterations,
        "target_us": TARGET_US,
        "results": results,
        "note": None
        if device == "cuda"
        else "no CUDA device: CPU path only (no device clock; nothing to compare)",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "launch_gap.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "launch_gap.md").write_text(markdown(report))
    return report


def _f(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Launch gap in the device clock, per timing mode",
        "",
        f"- Date: {m['date']}; device {m['device']}, {m.get('gpu', '-')}; "
        f"CUDA {m.get('cuda', '-')}, torch {m['torch']}; nvidia-smi: {m.get('nvidia_smi', '-')}",
        f"- {report['iterations']} iterations per mode (first tenth dropped), closed loop, no "
        "sleep, solo. Reference: one event pair around 50 launches held behind a gate "
        "(else a graph of 50), per launch.",
        f"- Target: |device p50 - reference| < {report['target_us']} us (1% of a 0.25 ms kernel).",
        "",
    ]
    if report["note"]:
        lines += [f"**{report['note']}**", ""]
    lines += [
        "| op | reference ms | mode | used | device p50 ms | bias us | bias % | target | "
        "host p50 ms | host vs eager | issue us |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["results"]:
        ref = e.get("reference", {})
        refv = ref.get("gated_batch_ms") or ref.get("graph_batch_ms")
        for mode, r in e["modes"].items():
            target = r.get("meets_target")
            lines.append(
                f"| {e['op']} | {_f(refv, '.4f')} | {mode} | {r['timing_used']['device_timing']} "
                f"| {_f(r['device_p50_ms'], '.4f')} | {_f(r.get('bias_us'), '+.1f')} "
                f"| {_f(r.get('bias_pct_of_reference'), '+.1f')} "
                f"| {'-' if target is None else ('met' if target else 'missed')} "
                f"| {r['host_p50_ms']:.4f} | {r['host_vs_eager_pct']:+.1f}% "
                f"| {r['issue_p50_us']:.1f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for launch_gap.json and launch_gap.md")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="tiny ops (a smoke test)")
    args = parser.parse_args(argv)
    report = run(args.out, args.iterations, args.quick)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
