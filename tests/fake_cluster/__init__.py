"""A fake Kubernetes cluster for CI: kmock's API emulator plus a Job controller and kubelet.

Jobs become pods whose container command runs as a local process; see :mod:`.emulator` for
the API semantics, :mod:`.controller` for the cluster side and :mod:`.cluster` for the
harness tests use. The names below load lazily, so that ``python -m
tests.fake_cluster.standin_worker`` (a container's command) does not import kmock and aiohttp.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FakeCluster": "tests.fake_cluster.cluster",
    "PodBehaviour": "tests.fake_cluster.controller",
    "inject_gpu_uuid": "tests.fake_cluster.controller",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
