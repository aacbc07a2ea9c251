"""One scenario per GPU at a time, across processes (pytest-xdist workers, parallel sessions).

A scenario takes an exclusive ``flock`` on a file named after the GPU's UUID before its
tenants start, and holds it until they have stopped. Scenarios that find a GPU busy take
another free one; when all are busy they wait for one, up to a timeout, and then refuse with
a clear error rather than measure two scenarios on one GPU (their tenants would be each
other's co-tenants and every DF would be wrong).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from pytest_kts import safefile
from pytest_kts.errors import ConfigError, KtsError


class GpuBusyError(KtsError):
    """No GPU became free in time."""


def lock_dir() -> Path:
    """The lock folder: ``$KTS_LOCK_DIR``, else per user: ``$XDG_RUNTIME_DIR/pytest-kts-locks``
    or ``<tempdir>/pytest-kts-locks-<uid>``. Its owner and mode (0700) are checked on use."""
    if os.environ.get("KTS_LOCK_DIR"):
        return Path(os.environ["KTS_LOCK_DIR"])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "pytest-kts-locks"
    return Path(tempfile.gettempdir()) / f"pytest-kts-locks-{os.getuid()}"


def _safe(uuid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", uuid)


@dataclass
class GpuLease:
    """An exclusive hold on one GPU; ``index`` is its position among the visible devices."""

    index: int
    uuid: str
    _file: IO[str] | None = None

    def release(self) -> None:
        if self._file is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_UN)
            finally:
                self._file.close()
                self._file = None

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _usable_lock_dir() -> Path:
    folder = lock_dir()
    try:
        return safefile.private_dir(folder)
    except OSError as exc:
        source = "KTS_LOCK_DIR" if os.environ.get("KTS_LOCK_DIR") else "the lock folder"
        raise ConfigError(
            f"{source} {folder}: cannot hold lock files there ({exc.strerror or exc}); set "
            "KTS_LOCK_DIR to a folder of your own that you can write"
        ) from None


def _holders(paths: Sequence[Path]) -> str:
    pids = []
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            pids.append(str(int(path.read_text().split()[0])))
    return f" (pid {', '.join(pids)})" if pids else ""


def acquire(
    uuids: Sequence[str],
    *,
    timeout_s: float = 3600.0,
    poll_s: float = 0.5,
    prefer: int = 0,
    on_wait: Callable[[str], None] | None = None,
    notice_after_s: float = 1.0,
) -> GpuLease:
    """Take the first free GPU of ``uuids``, starting at ``prefer`` (spread xdist workers).

    While every one is busy, ``on_wait`` is told so (after ``notice_after_s``, then once a
    minute): a wait can last up to ``timeout_s`` and must not look like a hang.
    """
    if not uuids:
        raise GpuBusyError("no GPU to lock: the list of devices is empty")
    directory = _usable_lock_dir()
    order = [(prefer + k) % len(uuids) for k in range(len(uuids))]
    started = time.monotonic()
    deadline = started + timeout_s
    next_notice = started + notice_after_s
    while True:
        for index in order:
            path = directory / f"gpu-{_safe(uuids[index])}.lock"
            # O_NOFOLLOW: a symlink planted here must not get its target truncated below.
            fd = safefile.open_nofollow(path)
            handle = os.fdopen(fd, "r+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return GpuLease(index, uuids[index], handle)
        now = time.monotonic()
        if on_wait is not None and now >= next_notice and now < deadline:
            what = "the CPU" if list(uuids) == ["cpu"] else f"{len(uuids)} GPU(s)"
            paths = [directory / f"gpu-{_safe(u)}.lock" for u in uuids]
            on_wait(
                f"waiting {now - started:.0f} s for {what}: another pytest-kts scenario is "
                f"using it{_holders(paths)}; waiting up to {deadline - now:.0f} s more"
            )
            next_notice = now + 60.0
        if now >= deadline:
            raise GpuBusyError(
                f"every GPU ({len(uuids)}) stayed busy with other scenarios for {timeout_s:.0f} s; "
                "run fewer pytest-xdist workers than GPUs, or raise the timeout"
            )
        time.sleep(poll_s)


def visible_gpu_uuids() -> list[str]:
    """UUIDs of the GPUs this process may use, in CUDA_VISIBLE_DEVICES order where NVML knows."""
    try:
        import pynvml
    except ImportError:
        pynvml = None  # type: ignore[assignment]
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                count = pynvml.nvmlDeviceGetCount()
                all_uuids = []
                for i in range(count):
                    raw = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                    all_uuids.append(raw.decode() if isinstance(raw, bytes) else str(raw))
            finally:
                pynvml.nvmlShutdown()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is None:
                return all_uuids
            picked = []
            for item in (v.strip() for v in visible.split(",") if v.strip()):
                if item.isdigit() and int(item) < len(all_uuids):
                    picked.append(all_uuids[int(item)])
                else:
                    picked += [u for u in all_uuids if u.startswith(item)]
            return picked
        except Exception:
            pass
    try:
        import torch

        return [f"cuda-index-{i}" for i in range(torch.cuda.device_count())]
    except ImportError:
        return []
