"""How long Ctrl-C (SIGINT) and SIGTERM take to end a pytest run in the middle of a phase.

Starts ``pytest`` on a scenario whose tenants sleep 2 s between iterations (so a phase lasts
minutes and a worker is almost always asleep, the case that used to hold Ctrl-C for its whole
sleep), waits until the shared phase has begun, sends the signal to pytest, and measures the
time until pytest has exited, and whether any worker process is left. Target: under 1 s.

    python benchmarks/interrupt_time.py --out DIR [--repeat 3]

Writes ``DIR/interrupt_time.json`` and ``DIR/interrupt_time.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLAIN = "import time\n\ndef test_long():\n    time.sleep(600)\n"
TEST = textwrap.dedent(
    """
    def test_long(kts):
        kts.tenant("fft", size=16, sleep_ms=2000, warmup=1)
        kts.tenant("matmul", size=16, sleep_ms=2000, warmup=1)
        kts.run()
    """
)


def _workers_of(pid: int) -> list[int]:
    """Worker processes whose KTS_PARENT_PID is ``pid`` (they run in their own sessions)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"KTS_PARENT_PID={pid}".encode() in environ and b"pytest_kts.workers" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def once(sig: signal.Signals, tmp: Path, plain: bool = False) -> dict[str, object]:
    (tmp / "test_long.py").write_text(PLAIN if plain else TEST)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable, "-m", "pytest", "test_long.py", "-p", "no:cacheprovider", "-s",
        "--kts-device", "cpu", "--kts-iterations", "1000", "--kts-round-iterations", "1000",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # Wait until both workers run (they start in their own sessions), then well into a phase:
    # every worker is then asleep between iterations.
    deadline = time.monotonic() + 120
    while not plain and len(_workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(4.0)
    workers = _workers_of(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    exited = time.monotonic() - t0
    left = [p for p in workers if _alive(p)]
    return {
        "signal": sig.name + (" (a test without the kts fixture)" if plain else ""),
        "seconds_to_exit": round(exited, 3),
        "workers_seen": len(workers),
        "workers_left": len(left),
        "exit_code": proc.returncode,
        "command": shlex.join(cmd),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for sig, plain in ((signal.SIGINT, True), (signal.SIGINT, False), (signal.SIGTERM, False)):
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(once(sig, Path(tmp), plain))
                print(rows[-1], flush=True)
    summary = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "runs": rows,
    }
    (out / "interrupt_time.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Time from a signal to the end of pytest, mid-phase",
        "",
        f"`{summary['command']}` on {summary['date']}, {summary['machine']}, CPU tenants that "
        "sleep 2 s between iterations (so a stop arrives during a sleep). Target: under 1 s. "
        "The rows of a test without the kts fixture are the floor: pytest's own exit after "
        "Ctrl-C on this machine (the plugin loaded, torch imported to find a GPU).",
        "",
        "| signal | seconds to exit | workers seen | workers left | exit code |",
        "|---|---|---|---|---|",
        *(
            f"| {r['signal']} | {r['seconds_to_exit']} | {r['workers_seen']} | "
            f"{r['workers_left']} | {r['exit_code']} |"
            for r in rows
        ),
    ]
    (out / "interrupt_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
