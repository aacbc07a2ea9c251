"""A private CUDA MPS control daemon for one scenario, always stopped afterwards.

The daemon gets its own pipe and log directories, so it neither finds nor disturbs another
MPS daemon on the machine, and changes none of the card's settings. Clients (the tenants)
find it through the same two environment variables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pytest_kts.errors import ConfigError

CONTROL = "nvidia-cuda-mps-control"


class MpsDaemon:
    def __init__(self, control: str = CONTROL) -> None:
        self.control = control
        self.root: Path | None = None
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        if self.root is None:
            return {}
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.root / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.root / "log"),
        }

    def start(self) -> dict[str, str]:
        binary = shutil.which(self.control)
        if binary is None:
            raise ConfigError(
                f"--kts-sharing mps needs {self.control} on PATH (it ships with the NVIDIA driver)"
            )
        self.root = Path(tempfile.mkdtemp(prefix="kts-mps-"))
        (self.root / "pipe").mkdir()
        (self.root / "log").mkdir()
        env = dict(os.environ) | self.env
        result = subprocess.run(
            [binary, "-d"], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            self._cleanup_dirs()
            raise ConfigError(
                f"could not start an MPS daemon (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[:300]}"
            )
        self.running = True
        return self.env

    def stop(self) -> None:
        if not self.running or self.root is None:
            self._cleanup_dirs()
            return
        env = dict(os.environ) | self.env
        binary = shutil.which(self.control) or self.control
        try:
            subprocess.run(
                [binary], input="quit\n", env=env, capture_output=True, text=True, timeout=30,
                check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            pass
        # The daemon removes its pipe when it has gone; wait for that, briefly.
        control_pipe = self.root / "pipe" / "control"
        deadline = time.monotonic() + 10
        while control_pipe.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.running = False
        self._cleanup_dirs()

    def _cleanup_dirs(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
