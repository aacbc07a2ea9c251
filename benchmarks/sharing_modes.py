"""Device run for docs/sharing-modes.md: the three sharing modes side by side, and GIL cost.

python3 benchmarks/sharing_modes.py gpu|cpu N [SIZE] [MODES]   (as run: from build/streams-bench/)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

try:
    import tabulate  # noqa: F401
except ImportError:  # the device image may lack it; workers import pytest_kts too
    stub = Path("/tmp/kts-stubs")
    stub.mkdir(exist_ok=True)
    (stub / "tabulate.py").write_text("def tabulate(*a, **k):\n    return ''\n")
    sys.path.insert(0, str(stub))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(stub), os.environ.get("PYTHONPATH", "")])

import numpy as np

from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.backends.local import LocalBackend
from pytest_kts.backends.streams import StreamsBackend

what, N = sys.argv[1], int(sys.argv[2])
out_dir = Path(os.environ.get("OUT", "/tmp"))


def pct(samples, clock="host_ms"):
    a = np.array([getattr(s, clock) for s in samples])[len(samples) // 10 :]
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def scenario(label, make, tenants, device, probe, rounds=1, shared_extra=None):
    rows = []
    t0 = time.monotonic()
    try:
        backend = make()
        with backend:
            backend.start(tenants, device)
            for rnd in range(rounds):
                solo = {}
                for t in tenants:
                    if t.name == probe or shared_extra is None:
                        solo[t.name] = backend.run_phase(PhasePlan("solo", rnd, {t.name: N}), 600)
                targets = {t.name: N for t in tenants}
                shared = backend.run_phase(PhasePlan("shared", rnd, targets), 600)
                for name, out in solo.items():
                    ss, sh = out.readers[name].samples, shared.readers[name].samples
                    rec = {"mode": label, "round": rnd, "tenant": name, "n_shared": len(sh)}
                    for clock in ("host_ms", "device_ms"):
                        if device == "cuda" or clock == "host_ms":
                            s50, s99 = pct(ss, clock)
                            h50, h99 = pct(sh, clock)
                            rec[clock] = dict(
                                solo_p50=s50,
                                solo_p99=s99,
                                shared_p50=h50,
                                shared_p99=h99,
                                df_p99=h99 / s99,
                            )
                    rows.append(rec)
                    print(json.dumps(rec), flush=True)
            facts = backend.facts()
            print(
                "FACTS",
                label,
                json.dumps({k: facts.get(k) for k in ("sharing", "priorities", "gpu_uuids")}),
                json.dumps(
                    {
                        n: {
                            k: m.get(k)
                            for k in (
                                "streams",
                                "priority",
                                "priority_range",
                                "switch_interval_ms",
                                "gpu_name",
                            )
                        }
                        for n, m in facts["tenants"].items()
                    }
                ),
                flush=True,
            )
    except Exception as exc:  # one mode failing must not lose the others
        print("FAILED", label, type(exc).__name__, str(exc)[:2000], flush=True)
    print(f"# {label}: {time.monotonic() - t0:.0f} s", flush=True)
    return rows


rows = []
if what == "cpu":
    probe = TenantSpec("probe", "matmul", 64, sleep_ms=2.0, warmup=20)
    for co, co_size in (("fft", 16), ("matmul", 256)):
        other = TenantSpec("other", co, co_size, sleep_ms=0.0, warmup=5)
        for label, make in (
            ("timeslice", LocalBackend),
            ("streams", StreamsBackend),
            ("streams-switch0.5ms", lambda: StreamsBackend(switch_interval_ms=0.5)),
        ):
            rows += scenario(
                f"{label}/{co}{co_size}",
                make,
                [probe, other],
                "cpu",
                "probe",
                rounds=2,
                shared_extra=True,
            )
else:
    import torch

    print(
        "torch",
        torch.__version__,
        "priority_range",
        getattr(torch.cuda.Stream, "priority_range", lambda: None)(),
        flush=True,
    )
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 8192
    fft = TenantSpec("fft", "fft", size, sleep_ms=20.0, warmup=20)
    gemm = TenantSpec("gemm", "matmul", size, sleep_ms=30.0, warmup=5)
    modes = (
        sys.argv[4].split(",")
        if len(sys.argv) > 4
        else ["timeslice", "mps", "streams", "streams-prio"]
    )
    makers = {
        "timeslice": LocalBackend,
        "mps": lambda: LocalBackend(sharing="mps"),
        "streams": StreamsBackend,
        "streams-prio": lambda: StreamsBackend(priorities={"fft": -100, "gemm": 0}),
        "streams-prio-inv": lambda: StreamsBackend(priorities={"fft": 0, "gemm": -100}),
    }
    for label in modes:
        rows += scenario(f"{label}-{size}", makers[label], [fft, gemm], "cuda", "fft")
(out_dir / f"bench-{what}-{sys.argv[3] if len(sys.argv) > 3 else ''}.json").write_text(
    json.dumps(rows, indent=1)
)
