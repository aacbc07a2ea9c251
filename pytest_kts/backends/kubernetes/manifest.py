"""The Job every tenant runs as: ``manifests/job-template.yaml`` (the one copy, shipped in the
wheel as this package's ``job-template.yaml``), filled in by :func:`render_job`; and under DRA
the ResourceClaim a phase's Jobs share (:func:`render_claim`). How a pod asks for its GPU is
:mod:`.gpu_request`'s."""

from __future__ import annotations

import copy
import functools
import math
from importlib import resources
from typing import Any

from pytest_kts.backends.base import TenantSpec
from pytest_kts.backends.kubernetes.settings import (
    ANNOTATION_TENANT,
    DEADLINE_SLACK_S,
    LABEL_JOB,
    LABEL_PHASE,
    LABEL_ROUND,
    LABEL_RUN_ID,
    LABEL_TENANT,
    TTL_KEPT_S,
    TTL_S,
    ClusterSettings,
    label_value,
)

TEMPLATE_FILE = "job-template.yaml"


@functools.cache
def _template() -> dict[str, Any]:
    import yaml  # a dependency of the kubernetes client

    text = resources.files(__package__).joinpath(TEMPLATE_FILE).read_text(encoding="utf-8")
    job = yaml.safe_load(text)
    if not isinstance(job, dict) or job.get("kind") != "Job":
        raise RuntimeError(f"{TEMPLATE_FILE} in {__package__} is not a Job manifest")
    return job


def job_template() -> dict[str, Any]:
    """A fresh copy of the Job template (``manifests/job-template.yaml``)."""
    return copy.deepcopy(_template())


def render_job(
    settings: ClusterSettings,
    spec: TenantSpec,
    *,
    device: str,
    name: str,
    phase: str,
    round: int,
    iterations: int,
    start_at_ns: int | None = None,
    min_duration_s: float | None = None,
    deadline_s: float | None = None,
    max_duration_s: float | None = None,
    claim: str | None = None,
) -> dict[str, Any]:
    """The Job manifest of one tenant in one phase, from :func:`job_template`.

    ``claim``: under DRA, the phase's ResourceClaim (:func:`render_claim`) the pod names.
    """
    job = job_template()
    labels = {
        **job["metadata"]["labels"],
        LABEL_RUN_ID: label_value(settings.run_id),
        LABEL_TENANT: label_value(spec.name),
        LABEL_PHASE: phase,
        LABEL_ROUND: str(round),
        LABEL_JOB: name,
    }
    job["metadata"].update(
        name=name,
        namespace=settings.namespace,
        labels=dict(labels),
        annotations={ANNOTATION_TENANT: spec.name},
    )
    jspec = job["spec"]
    jspec["ttlSecondsAfterFinished"] = TTL_KEPT_S if settings.keep_jobs else TTL_S
    timeout = deadline_s if deadline_s is not None else settings.timeout_s
    jspec["activeDeadlineSeconds"] = math.ceil(timeout) + DEADLINE_SLACK_S
    template = jspec["template"]
    template["metadata"]["labels"] = dict(labels)
    template["metadata"]["annotations"] = {ANNOTATION_TENANT: spec.name}
    pod = template["spec"]
    container = pod["containers"][0]
    container["image"] = settings.image
    container["imagePullPolicy"] = settings.image_pull_policy
    container["command"] = list(settings.worker_command)
    args = [
        *spec.worker_argv(device),
        "--phase", phase, "--round", str(round), "--iterations", str(iterations),
    ]  # fmt: skip
    if start_at_ns is not None:
        args += ["--start-at-ns", str(int(start_at_ns))]
    if min_duration_s:
        args += ["--min-duration-s", f"{min_duration_s:.3f}"]
    if max_duration_s is not None:
        # The phase's time share: the worker stops below its target and keeps its samples.
        args += ["--max-duration-s", f"{max_duration_s:.3f}"]
    container["args"] = args
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update({"KTS_RUN_ID": settings.run_id, **{str(k): str(v) for k, v in spec.env.items()}})
    container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    # The template's other resources (ephemeral-storage) stay; cpu and memory are the settings'.
    template_resources = container.get("resources") or {}
    requests: dict[str, str] = {
        **(template_resources.get("requests") or {}),
        "cpu": settings.cpu_request,
        "memory": settings.memory_request,
    }
    limits: dict[str, str] = dict(template_resources.get("limits") or {})
    limits.pop("memory", None)
    if settings.memory_limit:
        limits["memory"] = settings.memory_limit
    container["resources"] = {}
    if device != "cpu":
        if settings.runtime_class:
            pod["runtimeClassName"] = settings.runtime_class
        settings.gpu.apply(pod, template["metadata"], requests, limits, claim)
    container["resources"].update(requests=requests, **({"limits": limits} if limits else {}))
    if settings.node:
        pod["nodeSelector"] = {"kubernetes.io/hostname": settings.node}
    return job


def render_claim(settings: ClusterSettings, *, name: str, phase: str, round: int) -> dict[str, Any]:
    """The ResourceClaim that one phase's pods share (``--kts-gpu-request dra``)."""
    labels = {
        **job_template()["metadata"]["labels"],
        LABEL_RUN_ID: label_value(settings.run_id),
        LABEL_PHASE: phase,
        LABEL_ROUND: str(round),
    }
    return settings.gpu.resource_claim(name, settings.namespace, labels)
