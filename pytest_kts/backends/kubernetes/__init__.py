"""Kubernetes backend: every tenant of every phase runs as one Job on a shared GPU (a
device-plugin replica, a DRA claim, HAMi's or KAI's share: :mod:`.gpu_request`).

What happens in a phase (``run_phase``):

1. One Job per tenant is created from ``manifests/job-template.yaml`` (the one
   copy, :mod:`.manifest`); its container runs
   ``python -m pytest_kts.workers.run <TenantSpec.worker_argv(device)> --phase P --round R
   --iterations N``.
2. A thread per tenant follows the pod's log (``follow=true&timestamps=true``, raw chunks split
   into lines here; the log endpoint answers 400 while the container is being created, so it
   retries; a dropped or idle stream is resumed and the kubelet timestamps drop what was seen).
3. The Jobs are awaited by a watch until their condition ``Complete`` or ``Failed`` is
   ``"True"``; a watch that ends in ``410 Gone`` is re-listed and resumed. Between watch
   segments the pods are checked: one that stays unschedulable or cannot pull its image ends
   the phase with a :class:`ClusterError` carrying the pod's events.

The shared phase must overlap for its whole measured window, but pods start when the scheduler
and kubelet get to them, and a Job has no stdin to release them together. So:

- a start barrier by the clock: every co-tenant gets the same ``--start-at-ns``, an instant
  far enough ahead to cover the pod start-up seen in this run's solo phases (x1.5 + 2 s;
  20 s before any was seen). Workers warm up, say ``ready``, then sleep until that instant;
- background load until the slowest finishes: every co-tenant gets ``--min-duration-s``, the
  longest time a co-tenant needed for its target in its solo phase, x2 for the slowdown (and
  at least 1 s + a quarter of the lead, for co-tenants that wake or start a little late);
- a check afterwards: only the window in which every tenant was measuring counts. Samples
  before the last tenant's first sample or after the first tenant's last sample are dropped
  (counted in :meth:`KubernetesBackend.facts`), and tenants that never overlapped raise
  :class:`ColocationError`.

Co-location on one GPU is checked, not assumed: every worker prints its GPU UUID (``KTS_META``)
and a shared phase whose tenants saw different UUIDs raises :class:`ColocationError`. The
device plugin's default ``distributed`` policy hands replicas out from the least-used GPU, so
two pods on one multi-GPU node land on different GPUs unless pinned to a single-GPU node.

Everything the backend creates carries ``app.kubernetes.io/managed-by=pytest-kts`` and
``kts.run-id``; Jobs are deleted at :meth:`KubernetesBackend.close` and on Ctrl-C (with
``propagationPolicy=Background`` so their pods go too) unless ``keep_jobs``.
``ttlSecondsAfterFinished`` and ``activeDeadlineSeconds`` clean up after a runner that died.

The ``kubernetes`` package is imported lazily (in :mod:`.client`, once): :class:`ClusterSettings`
works without it. Every API call has a deadline and bounded retries; an API server that stops
answering ends the phase with one line naming it and the call in flight, and cleanup retries
for a bounded time, then prints the ``kubectl delete`` command for what it left.

Modules, by concern: :mod:`.settings` (what the backend is told, names, tunables),
:mod:`.client` (connection, deadlines, retries, error text: every API call goes through its
:class:`~.client.Client`), :mod:`.errors` (the API's statuses as typed errors),
:mod:`.gpu_request` (how a pod asks for its GPU, per ``--kts-gpu-request``), :mod:`.manifest`
(the Job, the DRA claim), :mod:`.objects` (what a run created, and its cleanup), :mod:`.watch`
(waiting for the Jobs), :mod:`.logs` (the log threads), :mod:`.diagnose` (errors with events),
:mod:`.backend`.
The co-location and overlap checks are :mod:`pytest_kts.colocation`, shared by every backend.
"""

from __future__ import annotations

from pytest_kts.backends.kubernetes.backend import KubernetesBackend, make_cluster_backend
from pytest_kts.backends.kubernetes.client import (
    Client,
    ClusterClients,
    check_reachable,
    connect,
)
from pytest_kts.backends.kubernetes.errors import (
    ApiBadRequest,
    ApiClientError,
    ApiConflict,
    ApiError,
    ApiForbidden,
    ApiGone,
    ApiNotFound,
    ApiServerError,
    ApiTooManyRequests,
    ApiUnauthorized,
    ApiUnprocessable,
    ApiUnreachable,
)
from pytest_kts.backends.kubernetes.gpu_request import GpuRequest
from pytest_kts.backends.kubernetes.logs import parse_timestamp_ns
from pytest_kts.backends.kubernetes.manifest import job_template, render_claim, render_job
from pytest_kts.backends.kubernetes.settings import (
    ClusterSettings,
    claim_name,
    cluster_settings,
    dns_slug,
    job_name,
    label_value,
)

__all__ = [
    "ApiBadRequest",
    "ApiClientError",
    "ApiConflict",
    "ApiError",
    "ApiForbidden",
    "ApiGone",
    "ApiNotFound",
    "ApiServerError",
    "ApiTooManyRequests",
    "ApiUnauthorized",
    "ApiUnprocessable",
    "ApiUnreachable",
    "Client",
    "ClusterClients",
    "ClusterSettings",
    "GpuRequest",
    "KubernetesBackend",
    "check_reachable",
    "claim_name",
    "cluster_settings",
    "connect",
    "dns_slug",
    "job_name",
    "job_template",
    "label_value",
    "make_cluster_backend",
    "parse_timestamp_ns",
    "render_claim",
    "render_job",
]
