"""Facts about the machine a run measured: device, GPU, driver, CUDA, torch, host.

Torch and NVML are imported lazily and are optional: a machine without them still reports
what it can, and says what it could not find.
"""

from __future__ import annotations

import functools
import platform
import socket
import sys
from typing import Any

from pytest_kts import sharing_env
from pytest_kts.errors import NoDeviceError


@functools.lru_cache(maxsize=1)
def _torch_facts() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch": None, "cuda_available": False, "why": "torch is not installed"}
    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        facts["cuda_available"] = bool(torch.cuda.is_available())
        if facts["cuda_available"]:
            facts["gpu_count"] = torch.cuda.device_count()
            facts["gpu_name"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # a broken driver must not break the test session
        facts["cuda_available"] = False
        facts["why"] = f"torch.cuda failed: {exc}"
    return facts


@functools.lru_cache(maxsize=1)
def _nvml_facts() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        facts: dict[str, Any] = {"driver": _text(pynvml.nvmlSystemGetDriverVersion())}
        if pynvml.nvmlDeviceGetCount() > 0:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            facts["gpu_name"] = _text(pynvml.nvmlDeviceGetName(handle))
            facts["gpu_uuid"] = _text(pynvml.nvmlDeviceGetUUID(handle))
            facts["gpu_memory_mib"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20
        return facts
    except Exception:
        return {}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


# nvmlDeviceGetComputeMode's values, named as nvidia-smi names them.
_COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}


def _nvml_sharing(gpu: str | None) -> dict[str, str]:
    """Compute mode, MIG mode and driver from NVML (nvidia-smi adds the time-slice policy,
    which NVML has no getter for). Raises when NVML is absent or fails."""
    import pynvml

    pynvml.nvmlInit()
    try:
        if gpu:
            handle = pynvml.nvmlDeviceGetHandleByUUID(gpu.encode())
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        out = {"driver": _text(pynvml.nvmlSystemGetDriverVersion())}
        mode = int(pynvml.nvmlDeviceGetComputeMode(handle))
        out["compute_mode"] = _COMPUTE_MODES.get(mode, str(mode))
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
            out["mig_mode"] = "Enabled" if int(current) else "Disabled"
        except pynvml.NVMLError:  # a GPU without MIG answers NotSupported
            out["mig_mode"] = "not supported"
        return out
    finally:
        pynvml.nvmlShutdown()


@functools.lru_cache(maxsize=1)
def _torch_version() -> str | None:
    """torch's version without importing it (seconds on a busy machine, which a CPU run's first
    test would wait for while its tenants start): from its installed metadata, else by import."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        value = _torch_facts().get("torch")
        return None if value is None else str(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def resolve_device(requested: str) -> str:
    """``auto`` becomes ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one fails."""
    if requested == "cpu":
        return "cpu"
    available = _torch_facts().get("cuda_available", False)
    if available:
        return "cuda"
    if requested == "cuda":
        why = _torch_facts().get("why", "torch.cuda.is_available() is False")
        raise NoDeviceError(f"--kts-device cuda, but there is no CUDA device ({why})")
    return "cpu"


def cuda_available() -> bool:
    return bool(_torch_facts().get("cuda_available", False))


def facts(device: str) -> dict[str, Any]:
    """Everything a report needs to say where it was measured."""
    out: dict[str, Any] = {
        "device": device,
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if device == "cuda":
        torch_facts = _torch_facts()  # imported already: the device was resolved with it
        out["torch"] = torch_facts.get("torch")
        out["cuda"] = torch_facts.get("cuda")
        out["gpu_name"] = torch_facts.get("gpu_name")
        out["gpu_count"] = torch_facts.get("gpu_count")
        out.update({k: v for k, v in _nvml_facts().items() if v is not None})
        # The host's view; each tenant's worker reads its own (a scenario's record prefers it).
        out["sharing_env"] = sharing_env.read(
            device="cuda", gpu=out.get("gpu_uuid"), nvml=_nvml_sharing
        )
    else:
        out["torch"] = _torch_version()
        out["cpu"] = platform.processor() or platform.machine()
    return out


def header_line(device: str) -> str:
    f = facts(device)
    if device == "cuda":
        return (
            f"kts: device cuda, GPU {f.get('gpu_name')} ({f.get('gpu_uuid', 'uuid unknown')}), "
            f"driver {f.get('driver', 'unknown')}, CUDA {f.get('cuda')}, torch {f.get('torch')}; "
            f"sharing: {sharing_env.describe(f.get('sharing_env'))}"
        )
    torch_version = f.get("torch") or "not installed"
    return f"kts: device cpu ({f.get('cpu')}), no GPU clock, torch {torch_version}"
