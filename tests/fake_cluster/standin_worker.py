"""A stand-in for ``python -m pytest_kts.workers.run``: the same command line and output, no torch.

It starts in tens of milliseconds, so the fake-cluster tests of failure modes stay fast; one
test runs the real worker. It honours ``--start-at-ns``, ``--min-duration-s`` and
``--max-duration-s`` as the real
worker does. Run as ``python -m tests.fake_cluster.standin_worker ARGS``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

from pytest_kts import sharing_env
from pytest_kts.protocol import Sample, format_event, format_meta, format_sample


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="standin_worker")
    p.add_argument("--tenant", required=True)
    p.add_argument("--workload", default="fft")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--sleep-ms", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--arrival", default="closed")
    p.add_argument("--rate-hz", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--param", action="append", default=[])
    p.add_argument("--phase", default="solo")
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--start-at-ns", type=int, default=None)
    p.add_argument("--min-duration-s", type=float, default=0.0)
    p.add_argument("--max-duration-s", type=float, default=None)
    args = p.parse_args(argv)
    tenant = args.tenant

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    # As the real worker: the sharing environment of this process (a pod's env, nvidia-smi).
    env = sharing_env.read(device=args.device if args.device != "auto" else "cpu")
    facts = {"device": "cpu", "pid": os.getpid(), "clock": "host", "sharing_env": env}
    out(format_meta(tenant, facts))
    out("a line from a library that is not ours")
    out(format_event(tenant, "ready", {"pid": os.getpid()}))
    if args.start_at_ns is not None:
        delay = (args.start_at_ns - time.time_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
    out(format_event(tenant, "phase_start", {"phase": args.phase, "round": args.round}))
    began = time.perf_counter()
    i = 0
    cap = math.inf if args.max_duration_s is None else args.max_duration_s
    while i < args.iterations or time.perf_counter() - began < args.min_duration_s:
        if time.perf_counter() - began >= cap:
            break
        start = time.time_ns()
        sum(range(args.size * 50))  # a little work
        end = time.time_ns()
        host_ms = (end - start) / 1e6
        out(format_sample(Sample(tenant, args.phase, args.round, i, start, end, host_ms, math.nan)))
        i += 1
        if args.sleep_ms:
            time.sleep(args.sleep_ms / 1000)
    out(format_event(tenant, "phase_end", {"phase": args.phase, "round": args.round, "n": i}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
