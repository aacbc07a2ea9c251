"""The GPU sharing environment a process finds: the settings that decide how co-located
tenants share a GPU, recorded with every run so that two runs can be told apart.

What is read, and from where (nothing here changes a setting, and nothing needs root):

- ``time_slice``: the time-slice policy, from ``nvidia-smi compute-policy -l`` (NVML has no
  getter for it); the DRA driver's ``timeSlicingConfig.interval`` sets it for a whole GPU;
- ``compute_mode``, ``mig_mode``, ``driver``: ``nvidia-smi --query-gpu=...`` (or NVML, when the
  caller passes a reader of it: the worker side imports no NVML);
- ``mps``: the MPS client's settings when set (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``,
  ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``, ``CUDA_MPS_PIPE_DIRECTORY``) and the daemon's default
  active-thread percentage when a daemon answers on that pipe;
- ``hami``: the variables HAMi's device plugin injects (``CUDA_DEVICE_SM_LIMIT``,
  ``GPU_CORE_UTILIZATION_POLICY``, ``CUDA_DEVICE_MEMORY_LIMIT_<i>``).

Every worker reads it where it runs (in its pod, on a cluster) and prints it in ``KTS_META``;
:func:`combine` makes a scenario's record of its tenants'. What cannot be read is
``"unknown"`` with a note saying why; on the CPU the GPU fields are ``None``. Standard library
only: the worker side imports it. ``python -m pytest_kts.sharing_env`` prints this machine's
record as JSON.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

UNKNOWN = "unknown"
GPU_FIELDS = ("time_slice", "compute_mode", "mig_mode", "driver")
LABELS = {
    "time_slice": "time slice",
    "compute_mode": "compute mode",
    "mig_mode": "MIG",
    "driver": "driver",
}
MPS_ENV = {
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "active_thread_percentage",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "pinned_memory_limit",
    "CUDA_MPS_PIPE_DIRECTORY": "pipe_directory",
}
HAMI_ENV = ("CUDA_DEVICE_SM_LIMIT", "GPU_CORE_UTILIZATION_POLICY")
HAMI_MEMORY_PREFIX = "CUDA_DEVICE_MEMORY_LIMIT"
TIMEOUT_S = 5.0
# A pipe directory is a path of this run or pod, not a setting: it is recorded, never compared.
NOT_COMPARED = {"pipe_directory"}

# (argv, stdin) -> stdout; raises OSError, subprocess.SubprocessError on failure.
Runner = Callable[[Sequence[str], str | None], str]
# ((field, value), ...), notes: what nvidia-smi said of one GPU.
_SmiAnswer = tuple[tuple[tuple[str, str], ...], tuple[str, ...]]
# gpu uuid or None -> whatever of compute_mode, mig_mode, driver NVML gave.
NvmlReader = Callable[[str | None], Mapping[str, str]]


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    done = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    return done.stdout


def _words(text: str) -> str:
    return " ".join(text.split())


def parse_time_slice(text: str) -> str | None:
    """The policy in ``nvidia-smi compute-policy -l``'s output ("Timeslice  Default" -> Default).

    The first word after "Timeslice" that is not a column heading; None if there is none.
    """
    for line in text.splitlines():
        match = re.search(r"time\s*-?\s*slice\w*", line, re.I)
        if match is None:
            continue
        for word in re.findall(r"[A-Za-z][A-Za-z_]*", line[match.end() :]):
            if word.lower() not in {"policy", "value", "name", "setting", "current", "gpu"}:
                return str(word)
    return None


def _na(value: str) -> str:
    value = value.strip()
    return "not supported" if value.upper() in ("[N/A]", "N/A") else value


@functools.lru_cache(maxsize=8)
def _smi(
    gpu: str | None, smi: str, run: Runner
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """What ``nvidia-smi`` says of one GPU: ((field, value), ...), notes. Cached per process
    (the streams worker asks once per tenant; the GPU is the same)."""
    found: dict[str, str] = {}
    notes: list[str] = []
    select = ["-i", gpu] if gpu else []
    try:
        out = run([smi, "--query-gpu=driver_version,compute_mode,mig.mode.current",
                   "--format=csv,noheader", *select], None)  # fmt: skip
        first = next((line for line in out.splitlines() if line.strip()), "")
        values = [v.strip() for v in first.split(",")]
        if len(values) == 3:
            found.update(driver=values[0], compute_mode=_na(values[1]), mig_mode=_na(values[2]))
        else:
            notes.append(f"nvidia-smi --query-gpu printed {_words(first)[:80]!r}")
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"nvidia-smi --query-gpu failed: {_why(exc)}")
    policy_text, failure = "", ""
    # "-i" selects the GPU; a driver whose compute-policy takes no "-i" lists them all.
    for argv in ([smi, "compute-policy", "-l", *select], [smi, "compute-policy", "-l"])[
        : 2 if select else 1
    ]:
        try:
            policy_text = run(argv, None)
            break
        except (OSError, subprocess.SubprocessError) as exc:
            failure = _why(exc)
    if not policy_text:
        notes.append(f"nvidia-smi compute-policy -l failed: {failure or 'no output'}")
    elif (policy := parse_time_slice(policy_text)) is None:
        notes.append(f"nvidia-smi compute-policy -l printed {_words(policy_text)[:120]!r}")
    else:
        found["time_slice"] = policy
    return tuple(found.items()), tuple(notes)


def _why(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        said = _words(str(exc.stderr or exc.stdout or ""))[:120]
        return f"exit {exc.returncode}" + (f": {said}" if said else "")
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"no answer within {TIMEOUT_S:.0f} s"
    return _words(str(exc))[:120]


def _mps_daemon(pipe: str, run: Runner, environ: Mapping[str, str]) -> dict[str, str]:
    """The MPS daemon's default active-thread percentage, when one answers on ``pipe``."""
    control = shutil.which("nvidia-cuda-mps-control", path=environ.get("PATH"))
    if control is None or not os.path.isdir(pipe):
        return {}
    try:
        out = run([control], "get_default_active_thread_percentage\n")
    except (OSError, subprocess.SubprocessError):
        return {}
    value = _words(out)
    return (
        {"daemon_default_active_thread_percentage": value} if re.fullmatch(r"[\d.]+", value) else {}
    )


def _environment(environ: Mapping[str, str], run: Runner) -> dict[str, Any]:
    out: dict[str, Any] = {}
    mps = {key: environ[name] for name, key in MPS_ENV.items() if environ.get(name)}
    if "pipe_directory" in mps:
        mps.update(_mps_daemon(mps["pipe_directory"], run, environ))
    if mps:
        out["mps"] = mps
    hami = {
        name: value
        for name, value in sorted(environ.items())
        if value and (name in HAMI_ENV or name.startswith(HAMI_MEMORY_PREFIX))
    }
    if hami:
        out["hami"] = hami
    return out


def read(
    environ: Mapping[str, str] | None = None,
    *,
    device: str = "cuda",
    gpu: str | None = None,
    run: Runner = _run,
    nvml: NvmlReader | None = None,
) -> dict[str, Any]:
    """This process's sharing environment on ``gpu`` (a UUID; None: the first GPU).

    Never raises: what cannot be read is ``"unknown"`` and ``notes`` says why.
    """
    environ = os.environ if environ is None else environ
    record: dict[str, Any] = {}
    notes: list[str] = []
    if device != "cuda":
        record.update(dict.fromkeys(GPU_FIELDS))
        notes.append(f"device {device}: the tenants share CPU cores, not a GPU")
    else:
        record.update(dict.fromkeys(GPU_FIELDS, UNKNOWN))
        if nvml is not None:
            try:
                record.update({k: v for k, v in nvml(gpu).items() if k in GPU_FIELDS and v})
            except Exception as exc:  # NVML is optional; nvidia-smi may still answer
                notes.append(f"NVML: {_words(str(exc))[:120]}")
        smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
        if smi is None:
            notes.append("nvidia-smi not found on PATH")
        else:
            found, smi_notes = _smi(gpu, smi, run)
            for key, value in found:
                if record.get(key) in (None, UNKNOWN):
                    record[key] = value
            notes += smi_notes
        if gpu is None:
            notes.append("GPU not known: read for the first GPU")
    record.update(_environment(environ, run))
    if notes:
        record["notes"] = notes
    return record


# -- a scenario's record, from its tenants' ---------------------------------------------------


def combine(
    tenants: Mapping[str, Mapping[str, Any] | None],
    host: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One record for a scenario from what each tenant's worker read.

    The GPU fields are the tenants' (one GPU: the co-location check holds them to it); two
    tenants that read different values give ``"mixed: a=X, b=Y"``. A field no tenant could
    read comes from ``host`` (the runner's machine, for a local run) when it knows it. What is
    set per process (MPS, HAMi) is kept per tenant under ``tenants``.
    """
    reported = {n: r for n, r in tenants.items() if isinstance(r, Mapping)}
    record: dict[str, Any] = {}
    notes: list[str] = []
    for key in GPU_FIELDS:
        seen = {n: r.get(key) for n, r in reported.items() if r.get(key) not in (None, UNKNOWN)}
        values = set(seen.values())
        if len(values) == 1:
            record[key] = values.pop()
        elif values:
            record[key] = "mixed: " + ", ".join(f"{n}={v}" for n, v in sorted(seen.items()))
        elif any(r.get(key) == UNKNOWN for r in reported.values()):
            record[key] = UNKNOWN
        else:
            record[key] = None if reported else UNKNOWN
        if record[key] in (None, UNKNOWN) and host and host.get(key) not in (None, UNKNOWN):
            record[key] = host[key]
            notes.append(f"{LABELS[key]} read on the runner's host")
    per_tenant = {
        n: {k: dict(r[k]) for k in ("mps", "hami") if r.get(k)}
        for n, r in sorted(reported.items())
        if r.get("mps") or r.get("hami")
    }
    if per_tenant:
        record["tenants"] = per_tenant
    said = [set(r.get("notes") or []) for r in reported.values()]
    everyone = set.intersection(*said) if said else set()
    notes += sorted(everyone)  # said by every tenant: once, unprefixed
    for name, r in sorted(reported.items()):
        notes += [f"{name}: {note}" for note in r.get("notes") or [] if note not in everyone]
    missing = sorted(set(tenants) - set(reported))
    if missing:
        notes.append(f"not reported by {', '.join(missing)} (a worker older than this version?)")
    record["source"] = "workers" if reported else ("host" if host is not None else "none")
    if notes:
        record["notes"] = list(dict.fromkeys(notes))
    return record


def describe(record: Mapping[str, Any] | None) -> str:
    """One line: "time slice Default, compute mode Default, MIG Disabled, driver 580.159.04;
    b: MPS active_thread_percentage=50"."""
    if not record:
        return "not recorded"
    parts = [f"{LABELS[k]} {record.get(k)}" for k in GPU_FIELDS if record.get(k) is not None]
    text = ", ".join(parts) if parts else "no GPU"
    for name, settings in (record.get("tenants") or {}).items():
        for kind, values in settings.items():
            shown = ", ".join(f"{k}={v}" for k, v in values.items() if k not in NOT_COMPARED)
            if shown:
                text += f"; {name}: {'MPS' if kind == 'mps' else 'HAMi'} {shown}"
    return text


def _comparable(record: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(GPU-wide settings, per-process settings) by label, where known."""
    gpu = {LABELS[k]: str(record[k]) for k in GPU_FIELDS if record.get(k) not in (None, UNKNOWN)}
    process = {}
    for name, settings in (record.get("tenants") or {}).items():
        for kind, values in settings.items():
            for key, value in values.items():
                if key not in NOT_COMPARED:
                    process[f"{name} {'MPS' if kind == 'mps' else 'HAMi'} {key}"] = str(value)
    return gpu, process


def differences(now: Mapping[str, Any] | None, before: Mapping[str, Any] | None) -> list[str]:
    """What differs between two scenario records ("time slice Default -> Short").

    A GPU setting known on one side only is no difference (a baseline from before this
    record, or a field nobody could read): nothing can be said of it. A per-process setting
    (MPS, HAMi) set on one side and unset on the other is one.
    """
    if not now or not before:
        return []
    (gpu_now, proc_now), (gpu_before, proc_before) = _comparable(now), _comparable(before)
    out = [
        f"{key} {gpu_before[key]} -> {gpu_now[key]}"
        for key in gpu_now
        if key in gpu_before and gpu_now[key] != gpu_before[key]
    ]
    out += [
        f"{key} {proc_before.get(key, 'unset')} -> {proc_now.get(key, 'unset')}"
        for key in sorted(set(proc_now) | set(proc_before))
        if proc_now.get(key) != proc_before.get(key)
    ]
    return out


def main() -> int:
    """``python -m pytest_kts.sharing_env [--device cpu] [--gpu UUID]``: this machine's record."""
    args = sys.argv[1:]
    device = args[args.index("--device") + 1] if "--device" in args else "cuda"
    gpu = args[args.index("--gpu") + 1] if "--gpu" in args else None
    print(json.dumps(read(device=device, gpu=gpu), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
