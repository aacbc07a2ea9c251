"""The Kubernetes backend on a real cluster: RBAC, a co-located run, and failures that must be
reported with the pod's events. Skipped unless ``pytest --kts-cluster tests/cluster``."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_kts.backends import kubernetes as kb
from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.errors import ClusterError, WorkerError

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
RBAC = MANIFESTS / "rbac.yaml"
RBAC_DRA = MANIFESTS / "rbac-dra.yaml"  # --kts-gpu-request dra: ResourceClaims too


def fresh(settings: kb.ClusterSettings, **changes: Any) -> kb.ClusterSettings:
    return dataclasses.replace(settings, run_id=f"c{uuid.uuid4().hex[:8]}", **changes)


def test_the_credentials_may_do_what_the_backend_does(cluster_settings: kb.ClusterSettings) -> None:
    from kubernetes import client

    files = [RBAC] + ([RBAC_DRA] if cluster_settings.gpu.mode == "dra" else [])
    rules = [
        rule
        for path in files
        for d in yaml.safe_load_all(path.read_text())
        if d and d["kind"] == "Role"
        for rule in d["rules"]
    ]
    clients = kb.connect(cluster_settings)
    try:
        auth = client.AuthorizationV1Api(clients.api_client)
        denied = []
        for rule in rules:
            for resource in rule["resources"]:
                plural, _, sub = resource.partition("/")
                for verb in rule["verbs"]:
                    review = auth.create_self_subject_access_review(
                        {
                            "apiVersion": "authorization.k8s.io/v1",
                            "kind": "SelfSubjectAccessReview",
                            "spec": {
                                "resourceAttributes": {
                                    "namespace": cluster_settings.namespace,
                                    "group": rule["apiGroups"][0],
                                    "resource": plural,
                                    "subresource": sub or None,
                                    "verb": verb,
                                }
                            },
                        },
                        _request_timeout=(5, 30),
                    )
                    if not review.status.allowed:
                        denied.append(f"{verb} {resource}")
    finally:
        clients.close()
    names = " and ".join(f"manifests/{f.name}" for f in files)
    assert not denied, f"the kubeconfig may not: {denied}; apply {names}"


def test_solo_and_shared_on_one_gpu(
    cluster_settings: kb.ClusterSettings, cluster_device: str
) -> None:
    settings = fresh(cluster_settings)
    fft = TenantSpec("fft", "fft", 1024, sleep_ms=5, warmup=5)
    gemm = TenantSpec("gemm", "matmul", 1024, sleep_ms=5, warmup=5)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([fft, gemm], cluster_device)
        for tenant in ("fft", "gemm"):
            out = backend.run_phase(PhasePlan("solo", 0, {tenant: 100}), settings.timeout_s)
            assert len(out.readers[tenant].samples) >= 100
        shared = backend.run_phase(
            PhasePlan("shared", 0, {"fft": 100, "gemm": 100}), settings.timeout_s
        )
        facts = backend.facts()
    for reader in shared.readers.values():
        assert reader.samples and reader.malformed == 0
    record = facts["phases"][-1]
    assert record["overlap_s"] > 0
    if cluster_device != "cpu":
        assert record["colocation"].startswith("verified"), record
        assert all(s.device_ms == s.device_ms for r in shared.readers.values() for s in r.samples)
    assert len(facts["nodes"]) == 1, facts["nodes"]


def test_a_pin_to_a_missing_node_fails_with_scheduler_events(
    cluster_settings: kb.ClusterSettings, cluster_device: str
) -> None:
    node = f"kts-no-such-node-{uuid.uuid4().hex[:6]}"
    settings = fresh(cluster_settings, node=node, pending_grace_s=5.0)
    started = time.monotonic()
    with kb.KubernetesBackend(settings) as backend:
        backend.start([TenantSpec("fft", "fft", 256)], cluster_device)
        with pytest.raises(ClusterError, match="FailedScheduling"):
            backend.run_phase(PhasePlan("solo", 0, {"fft": 10}), 120)
    assert time.monotonic() - started < 90


def test_an_image_that_does_not_exist(
    cluster_settings: kb.ClusterSettings, cluster_device: str
) -> None:
    image = f"{cluster_settings.image.rsplit(':', 1)[0]}:kts-missing-{uuid.uuid4().hex[:6]}"
    settings = fresh(cluster_settings, image=image, pending_grace_s=10.0)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([TenantSpec("fft", "fft", 256)], cluster_device)
        with pytest.raises(ClusterError, match=r"ErrImagePull|ImagePullBackOff"):
            backend.run_phase(PhasePlan("solo", 0, {"fft": 10}), 300)


def test_a_worker_that_fails_is_a_worker_error(
    cluster_settings: kb.ClusterSettings, cluster_device: str
) -> None:
    settings = fresh(cluster_settings)
    with kb.KubernetesBackend(settings) as backend:
        backend.start([TenantSpec("broken", "no_such_module:build", 256)], cluster_device)
        with pytest.raises(WorkerError) as info:
            backend.run_phase(PhasePlan("solo", 0, {"broken": 10}), settings.timeout_s)
    assert "Events of pod" in str(info.value)
