"""How fast a tenant gets a ready worker: a fresh process, a fork server, a resident reload.

Three ways to give a new tenant spec a worker, each timed from the request to the worker's
``ready`` line (built and warmed up), ``--repeats`` times with the spec alternating between
an FFT and a GEMM:

- ``spawn``: a fresh interpreter, ``python -m pytest_kts.workers.run --serve`` (what the first
  test of a session pays);
- ``fork``: a fork server that has imported torch and the worker code and never touched CUDA
  forks a child per request; the child runs the worker (on a GPU it creates its own CUDA
  context: a context does not survive fork);
- ``reload``: a resident worker, interpreter, torch and CUDA context up, handed the spec with
  ``{"cmd": "load"}``: it releases its last tenant (and checks it left nothing) and builds.

    python benchmarks/worker_start.py --out DIR [--device cpu|cuda] [--repeats 5]

Writes ``DIR/worker_start.json`` and ``DIR/worker_start.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORKER = "pytest_kts.workers.run"

from benchmarks.run_facts import run_facts  # noqa: E402 - after the path is set

# The fork server: imports what a worker needs, then forks one child per argv line on stdin.
# Children share its stdout (one line at a time, flushed) and are reaped as they exit.
FORK_SERVER = textwrap.dedent(
    """
    import gc, json, os, sys
    import torch
    from pytest_kts.workers import run, resident, harness, workloads
    # As fork servers do: the imports' objects out of the children's collections (and pages).
    gc.collect()
    gc.freeze()
    print("SERVER up", flush=True)
    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            sys.stdin.close()
            # Standalone with 0 iterations: bring-up, build, warmup, ready, and out.
            code = run.main(argv + ["--iterations", "0"])
            sys.stdout.flush()
            os._exit(code)
        os.waitpid(pid, 0)
        print("SERVER reaped", pid, flush=True)
    """
)


def _specs(device: str) -> list[list[str]]:
    size = "2048" if device == "cuda" else "64"
    common = ["--size", size, "--sleep-ms", "1", "--warmup", "5", "--device", device]
    return [
        ["--tenant", "fft", "--workload", "fft", *common],
        ["--tenant", "gemm", "--workload", "matmul", *common],
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _until_ready(stream: IO[str]) -> dict[str, Any]:
    """Read protocol lines until a ready event; return its data."""
    for line in stream:
        if ",ready," in line and line.startswith("KTS_EVENT"):
            data: dict[str, Any] = json.loads(line.split(",", 4)[4])
            return data
        if ",error," in line:
            raise RuntimeError(line.strip())
    raise RuntimeError("the worker ended before it was ready")


def spawn(device: str, repeats: int) -> list[dict[str, Any]]:
    out = []
    for i in range(repeats):
        argv = _specs(device)[i % 2]
        env = _env() | {"KTS_SPAWNED_NS": str(time.time_ns())}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", WORKER, *argv, "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        ready = _until_ready(proc.stdout)
        out.append({"seconds": time.perf_counter() - t0, "worker": ready.get("startup", {})})
        proc.stdin.close()
        proc.wait(timeout=60)
    return out


def fork(device: str, repeats: int) -> tuple[float, list[dict[str, Any]]]:
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=_env(),
    )  # fmt: skip
    assert server.stdout is not None and server.stdin is not None
    if server.stdout.readline().strip() != "SERVER up":
        raise RuntimeError("the fork server did not start")
    server_up = time.perf_counter() - t0
    out = []
    try:
        for i in range(repeats):
            argv = _specs(device)[i % 2]
            t0 = time.perf_counter()
            server.stdin.write(json.dumps(argv) + "\n")
            server.stdin.flush()
            ready = _until_ready(server.stdout)
            out.append({"seconds": time.perf_counter() - t0, "worker": ready.get("startup", {})})
            while not server.stdout.readline().startswith("SERVER reaped"):
                pass
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    return server_up, out


def reload(device: str, repeats: int) -> list[dict[str, Any]]:
    specs = _specs(device)
    proc = subprocess.Popen(
        [sys.executable, "-m", WORKER, *specs[1], "--serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    _until_ready(proc.stdout)
    out = []
    try:
        for i in range(repeats):
            t0 = time.perf_counter()
            proc.stdin.write(json.dumps({"cmd": "load", "argv": specs[i % 2]}) + "\n")
            proc.stdin.flush()
            ready = _until_ready(proc.stdout)
            out.append({"seconds": time.perf_counter() - t0, "worker": ready.get("startup", {})})
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    server_up, forked = fork(args.device, args.repeats)
    results = {
        "spawn": spawn(args.device, args.repeats),
        "fork": forked,
        "reload": reload(args.device, args.repeats),
    }
    medians = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
    summary = {
        **run_facts(args.device),
        "fork_server_up_s": server_up,
        "median_s": medians,
        "runs": results,
    }
    (out_dir / "worker_start.json").write_text(json.dumps(summary, indent=2) + "\n")
    stages = ("interpreter_s", "import_s", "cuda_s", "release_s", "build_s", "warmup_s")
    lines = [
        "# A new tenant spec to a ready worker",
        "",
        f"`{summary['command']}` on {summary['date']} ({summary['machine']}, {summary['cpus']} "
        f"CPUs, {args.device}"
        + (f", {summary['gpu']}" if summary["gpu"] else "")
        + f", Python {summary['python']}); {args.repeats} requests each, the spec alternating "
        "between an FFT and a GEMM.",
        "",
        "| way | median s | min s | max s | " + " | ".join(stages) + " (median, as the worker "
        "timed them) |",
        "|---|---|---|---|" + "---|" * len(stages),
    ]
    for way, runs in results.items():
        secs = [r["seconds"] for r in runs]
        cells = []
        for stage in stages:
            values = [r["worker"][stage] for r in runs if stage in r["worker"]]
            cells.append(f"{statistics.median(values):.3f}" if values else "-")
        lines.append(
            f"| {way} | {medians[way]:.3f} | {min(secs):.3f} | {max(secs):.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        f"The fork server itself took {server_up:.2f} s to come up (interpreter and imports).",
    ]
    (out_dir / "worker_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
