"""The fixed cost of a test: its wall time minus the seconds of its phases.

Runs pytest sessions of ``--tests`` tests through the plugin (the fixed protocol with a few
iterations) and records per test the wall time of its ``kts.run()``, the seconds its phases
took (``ScenarioResult.gpu_seconds``) and the backend's start-up record (how each tenant got
its worker, and where the time went). Two suites:

- ``same``: every test declares the same two tenants (they stay resident: the pool's best case);
- ``differ``: every test's tenants are all new specs (another size for each, a co-tenant that
  alternates between a GEMM and a decode model, a third tenant every third test), so no
  worker can be kept as it was: each tenant is loaded into a resident process or spawned.

The first test of a session pays for starting processes (interpreter, ``import torch``, CUDA
context, build, warmup); later ones find processes up in the session's pool. Targets (issue
20): after the first test, fixed cost per test under 1 s on the GPU, and under half a bare
``import torch`` on the CPU (measured here, in the same run).

    python benchmarks/fixed_cost.py --out DIR [--device cuda|cpu] [--tests 8]
        [--tenants same|differ|both] [--iterations 50]

Writes ``DIR/fixed_cost.json`` and ``DIR/fixed_cost.md`` (command, machine, date, tables).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.run_facts import run_facts  # noqa: E402 - after the path is set
from pytest_kts.backends.startup import describe  # noqa: E402

TEST_FILE = textwrap.dedent(
    """
    import json, os, time

    import pytest

    OUT = os.environ["KTS_FIXED_COST_OUT"]
    SUITE = os.environ["KTS_FIXED_COST_TENANTS"]
    GPU = os.environ["KTS_FIXED_COST_DEVICE"] == "cuda"


    def declare(kts, i):
        if SUITE == "same":
            size = 2048 if GPU else 64
            kts.tenant("fft", size=size, sleep_ms=1)
            kts.tenant("matmul", size=size, sleep_ms=1)
            return
        # Every tenant a new spec in every test: the router's size, the co-tenant's kind
        # and size, and a third tenant every third test.
        kts.tenant("router", "fft", size=(1024 if GPU else 64) + (128 if GPU else 8) * i,
                   sleep_ms=1)
        if i % 2 == 0:
            kts.tenant("gemm", "matmul", size=(2048 if GPU else 64) + (256 if GPU else 8) * i,
                       sleep_ms=1)
        else:
            params = {"layers": str(1 + i // 2), "max_seq": "512" if GPU else "64"}
            params.update({"graph": "1"} if GPU else {"vocab": "512"})
            kts.tenant("decode", size=1024 if GPU else 64, sleep_ms=1, params=params)
        if i % 3 == 2:
            params = {"layers": "2" if GPU else "1", "seq": str(64 + 16 * i), "batch": "1"}
            kts.tenant("guard", "embed", size=768 if GPU else 64, sleep_ms=2, params=params)


    @pytest.mark.parametrize("i", range(int(os.environ["KTS_FIXED_COST_TESTS"])))
    def test_scenario(kts, i):
        declare(kts, i)
        t0 = time.perf_counter()
        result = kts.run()
        wall = time.perf_counter() - t0
        with open(OUT, "a") as f:
            f.write(json.dumps({"test": i, "wall_s": wall, "phases_s": result.gpu_seconds,
                                "phases": len(result.windows), "tenants": list(result.tenants),
                                "startup": result.backend.get("startup")}) + "\\n")
    """
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for fixed_cost.json and .md")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--tests", type=int, default=8)
    ap.add_argument("--tenants", default="both", choices=("same", "differ", "both"))
    ap.add_argument("--iterations", type=int, default=50)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            device = "cpu"
    suites = ("same", "differ") if args.tenants == "both" else (args.tenants,)
    import_torch_s = _bare_import_torch()
    runs: dict[str, dict[str, Any]] = {}
    for suite in suites:
        run = _session(suite, device, args.tests, args.iterations)
        if run is None:
            return 1
        runs[suite] = run
    target = 1.0 if device == "cuda" else import_torch_s / 2
    summary = {
        **run_facts(device),
        "iterations": args.iterations,
        "bare_import_torch_s": import_torch_s,
        "target_later_fixed_s": target,
        "suites": runs,
    }
    (out / "fixed_cost.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = _markdown(summary)
    (out / "fixed_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _session(suite: str, device: str, tests: int, iterations: int) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "test_fixed_cost.py"
        test.write_text(TEST_FILE)
        records = Path(tmp) / "records.jsonl"
        env = dict(os.environ)
        env.update(
            KTS_FIXED_COST_OUT=str(records),
            KTS_FIXED_COST_TENANTS=suite,
            KTS_FIXED_COST_DEVICE=device,
            KTS_FIXED_COST_TESTS=str(tests),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        )
        # Run from the tree where the plugin is not installed (its entry point registers it).
        load = [] if _installed() else ["-p", "pytest_kts.plugin"]
        cmd = [
            sys.executable, "-m", "pytest", str(test), *load,
            "-p", "no:cacheprovider", "-q", "--kts-device", device,
            "--kts-iterations", str(iterations),
            "--kts-round-iterations", str(iterations),
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        session_s = time.perf_counter() - t0
        rows = (
            [json.loads(line) for line in records.read_text().splitlines()]
            if records.exists()
            else []
        )
    if proc.returncode != 0 or len(rows) != tests:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        print(f"{suite}: pytest exited {proc.returncode} with {len(rows)} of {tests} records")
        return None
    for row in rows:
        row["fixed_s"] = row["wall_s"] - row["phases_s"]
    later = [r["fixed_s"] for r in rows[1:]]
    return {
        "pytest_command": shlex.join(cmd),
        "tests": rows,
        "first_fixed_s": rows[0]["fixed_s"],
        "later_fixed_s_median": statistics.median(later) if later else None,
        "later_fixed_s_max": max(later) if later else None,
        "session_wall_s": session_s,
    }


def _hows(startup: dict[str, Any] | None) -> str:
    if not startup:
        return "-"
    tenants = startup.get("tenants", {})
    return ", ".join(f"{name} {t.get('how')}" for name, t in tenants.items())


def _markdown(summary: dict[str, Any]) -> list[str]:
    device = summary["device"]
    target = summary["target_later_fixed_s"]
    rule = "1 s" if device == "cuda" else f"half a bare `import torch`, {target:.2f} s"
    lines = [
        "# Fixed cost per test",
        "",
        f"`{summary['command']}` on {summary['date']} ({summary['machine']}, "
        f"{summary['cpus']} CPUs, {device}"
        + (f", {summary['gpu']}" if summary["gpu"] else "")
        + f", Python {summary['python']}); the fixed protocol with {summary['iterations']} "
        f"iterations per phase. A bare `import torch` took {summary['bare_import_torch_s']:.2f} s "
        f"here (median of 3). Target after the first test: under {rule}.",
    ]
    titles = {
        "same": "Every test declares the same two tenants",
        "differ": "Every test's tenants are all new specs",
    }
    for suite, run in summary["suites"].items():
        rows = run["tests"]
        lines += [
            "",
            f"## {titles[suite]} (`--tenants {suite}`)",
            "",
            "| test | tenants | wall of kts.run() s | phases s | fixed cost s | start-up s |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['test']} | {_hows(r.get('startup'))} | {r['wall_s']:.2f} | "
                f"{r['phases_s']:.2f} | {r['fixed_s']:.2f} | "
                f"{(r.get('startup') or {}).get('wall_s', 0.0):.2f} |"
                for r in rows
            ),
            "",
            f"First test: {run['first_fixed_s']:.2f} s. Later tests: median "
            f"{run['later_fixed_s_median']:.2f} s, max {run['later_fixed_s_max']:.2f} s "
            f"({'meets' if run['later_fixed_s_max'] < target else 'misses'} the target). "
            f"Whole pytest session: {run['session_wall_s']:.1f} s.",
            "",
            f"First test, {describe(rows[0].get('startup')) or 'no start-up record'}.",
        ]
        if len(rows) > 1:
            lines += ["", f"Second test, {describe(rows[1].get('startup')) or '-'}."]
    return lines


def _bare_import_torch(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "kts" for ep in entry_points(group="pytest11"))


if __name__ == "__main__":
    sys.exit(main())
