"""Backends run tenants' workers and hand back their lines: local processes (``local``), one
process with a CUDA stream per tenant (``streams``), or Kubernetes Jobs (``kubernetes``).
:func:`make_backend` picks one from the settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pytest_kts.errors import ConfigError

if TYPE_CHECKING:
    from pytest_kts.backends.base import Backend
    from pytest_kts.config import RunSettings


def make_backend(
    settings: RunSettings, env: Mapping[str, str] | None = None, spares: int = 0
) -> Backend:
    """The backend for these settings; ``env`` goes to every local tenant (the GPU to use).
    ``spares``: worker processes a local backend starts beside its tenants, holding none, for
    later scenarios (a session's pool); a backend used once needs none."""
    if settings.cluster:
        from pytest_kts.backends.kubernetes import make_cluster_backend

        if settings.sharing != "timeslice":
            raise ConfigError(
                f"--kts-sharing {settings.sharing} is for the local backend; on a cluster the "
                "device plugin's configuration decides how pods share a GPU (manifests/)"
            )
        return make_cluster_backend(settings)
    if settings.sharing == "streams":
        from pytest_kts.backends.streams import StreamsBackend

        return StreamsBackend(env=env)
    from pytest_kts.backends.local import LocalBackend

    return LocalBackend(sharing=settings.sharing, env=env, spares=spares)
