"""The fixed cost of a test: its wall time minus the seconds of its phases.

Runs a pytest session of ``--tests`` identical tests (two tenants, the fixed protocol with a
few iterations) through the plugin, and records per test the wall time of its ``kts.run()``
and the seconds its phases took (``ScenarioResult.gpu_seconds``). The first test pays for
starting the tenants (interpreter, ``import torch``, CUDA initialisation, building the
workload, warmup); the later ones find them resident in the session's pool. Target: under
1 s of fixed cost per test after the first, on the GPU.

    python benchmarks/fixed_cost.py --out DIR [--device cuda|cpu] [--tests 6] [--size 2048]

Writes ``DIR/fixed_cost.json`` and ``DIR/fixed_cost.md`` (command, machine, date, table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TEST_FILE = textwrap.dedent(
    """
    import json, os, time

    import pytest

    OUT = os.environ["KTS_FIXED_COST_OUT"]
    SIZE = int(os.environ["KTS_FIXED_COST_SIZE"])


    @pytest.mark.parametrize("i", range(int(os.environ["KTS_FIXED_COST_TESTS"])))
    def test_scenario(kts, i):
        kts.tenant("fft", size=SIZE, sleep_ms=1)
        kts.tenant("matmul", size=SIZE, sleep_ms=1)
        t0 = time.perf_counter()
        result = kts.run()
        wall = time.perf_counter() - t0
        with open(OUT, "a") as f:
            f.write(json.dumps({"test": i, "wall_s": wall, "phases_s": result.gpu_seconds,
                                "phases": len(result.windows)}) + "\\n")
    """
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for fixed_cost.json and .md")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--tests", type=int, default=6)
    ap.add_argument("--size", type=int, default=0, help="0: 2048 on CUDA, 64 on the CPU")
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
    size = args.size or (2048 if device == "cuda" else 64)

    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "test_fixed_cost.py"
        test.write_text(TEST_FILE)
        records = Path(tmp) / "records.jsonl"
        env = dict(os.environ)
        env.update(
            KTS_FIXED_COST_OUT=str(records),
            KTS_FIXED_COST_SIZE=str(size),
            KTS_FIXED_COST_TESTS=str(args.tests),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        )
        # Run from the tree where the plugin is not installed (its entry point registers it).
        load = [] if _installed() else ["-p", "pytest_kts.plugin"]
        cmd = [
            sys.executable, "-m", "pytest", str(test), *load,
            "-p", "no:cacheprovider", "-q", "--kts-device", device,
            "--kts-iterations", str(args.iterations),
            "--kts-round-iterations", str(args.iterations),
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        session_s = time.perf_counter() - t0
        rows = (
            [json.loads(line) for line in records.read_text().splitlines()]
            if records.exists()
            else []
        )
    if proc.returncode != 0 or len(rows) != args.tests:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        print(f"pytest exited {proc.returncode} with {len(rows)} of {args.tests} records")
        return 1
    for row in rows:
        row["fixed_s"] = row["wall_s"] - row["phases_s"]
    later = [r["fixed_s"] for r in rows[1:]]
    summary = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "pytest_command": shlex.join(cmd),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "python": platform.python_version(),
        "device": device,
        "gpu": _gpu(),
        "size": size,
        "tests": rows,
        "first_fixed_s": rows[0]["fixed_s"],
        "later_fixed_s_median": sorted(later)[len(later) // 2] if later else None,
        "later_fixed_s_max": max(later) if later else None,
        "session_wall_s": session_s,
    }
    (out / "fixed_cost.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Fixed cost per test",
        "",
        f"`{summary['command']}` on {summary['date']} ({summary['machine']}, {device}"
        + (f", {summary['gpu']}" if summary["gpu"] else "")
        + f", Python {summary['python']}); each test: two tenants of size {size}, "
        f"{args.iterations} iterations per phase (fixed protocol).",
        "",
        "| test | wall of kts.run() s | phases s | fixed cost s |",
        "|---|---|---|---|",
        *(
            f"| {r['test']} | {r['wall_s']:.2f} | {r['phases_s']:.2f} | {r['fixed_s']:.2f} |"
            for r in rows
        ),
        "",
        f"First test (tenants start): {summary['first_fixed_s']:.2f} s. Later tests (tenants "
        f"resident in the session's pool): median {summary['later_fixed_s_median']:.2f} s, "
        f"max {summary['later_fixed_s_max']:.2f} s. Whole pytest session: {session_s:.1f} s.",
    ]
    (out / "fixed_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "kts" for ep in entry_points(group="pytest11"))


def _gpu() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    )


if __name__ == "__main__":
    sys.exit(main())
