"""Every manifest pytest-kts creates or ships, against the official Kubernetes schemas
(issue 21 item 3): ``kubernetes-validate`` in strict mode (unknown fields are errors), for every
``--kts-gpu-request`` mode, at the oldest and the newest Kubernetes that mode supports
(``gpu_request.SUPPORTED_KUBERNETES``: DRA's ``resource.k8s.io/v1`` starts at 1.34).

The objects are those a run creates, rendered by the dry run: the ResourceClaims and Jobs of a
first round (adaptive and fixed), GPU and CPU, with every option of the mode set so that every
field it can write is checked; and the files in ``manifests/`` (RBAC, namespace, RuntimeClass,
device-plugin configs, the Job template).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytest.importorskip("kubernetes")

from pytest_kts import dryrun  # noqa: E402
from pytest_kts.backends.base import TenantSpec  # noqa: E402
from pytest_kts.backends.kubernetes.gpu_request import SUPPORTED_KUBERNETES  # noqa: E402
from pytest_kts.config import RunSettings  # noqa: E402

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
TENANTS = [
    TenantSpec("fft", "fft", 2048, sleep_ms=5, env={"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}),
    TenantSpec("gemm", "matmul", 4096, sleep_ms=20, arrival="poisson", rate_hz=20),
]
# Every option of each mode, so that every field it can write is in some manifest.
OPTIONS: dict[str, list[dict[str, Any]]] = {
    "device-plugin": [{"node": "gpu-1"}],
    "dra": [
        {"dra_sharing": "timeslicing", "dra_interval": "Long"},
        {"dra_sharing": "mps", "dra_mps_threads": 50, "dra_mps_memory": "10Gi"},
        {"dra_device_class": "mig.nvidia.com"},
    ],
    "hami": [{"hami_cores": 30, "hami_memory": 3000}],
    "kai": [{"kai_fraction": 0.25, "kai_queue": "team-a", "runtime_class": None}],
}


def _rendered(mode: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for k, options in enumerate(OPTIONS[mode]):
        settings = RunSettings(cluster=True, gpu_request=mode, keep_jobs=True, **options)
        for slo in (None, {"fft": 1.3}):
            for device in ("cuda", "cpu"):
                docs = dryrun.manifests(TENANTS, settings, slo, device=device)
                where = f"{mode}#{k} slo={bool(slo)} {device}"
                out += [(f"{where} {d['kind']} {d['metadata']['name']}", d) for d in docs]
    return out


def _shipped() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        if path.name == "kustomization.yaml":  # a kustomize file, no Kubernetes object
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                found.append((f"{path.relative_to(MANIFESTS)}#{i}", doc))
    return found


def _validate_all(documents: list[tuple[str, dict[str, Any]]], version: str) -> None:
    for where, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {path}: {exc.message}")


CASES = [(mode, version) for mode, versions in SUPPORTED_KUBERNETES.items() for version in versions]


@pytest.mark.parametrize(("mode", "version"), CASES, ids=[f"{m}-{v}" for m, v in CASES])
def test_every_rendered_manifest_is_valid_for_the_versions_of_its_mode(
    mode: str, version: str
) -> None:
    rendered = _rendered(mode)
    kinds = {doc["kind"] for _, doc in rendered}
    assert kinds == ({"Job", "ResourceClaim"} if mode == "dra" else {"Job"})
    _validate_all(rendered, version)


@pytest.mark.parametrize("version", sorted({v for vs in SUPPORTED_KUBERNETES.values() for v in vs}))
def test_every_shipped_manifest_is_valid(version: str) -> None:
    shipped = _shipped()
    assert {"Role", "RoleBinding", "ServiceAccount", "Job", "Namespace"} <= {
        d["kind"] for _, d in shipped
    }
    _validate_all(shipped, version)


def test_the_validation_is_strict_and_knows_the_versions() -> None:
    """A field Kubernetes does not know fails, and DRA's API does not exist before 1.34."""
    job = next(d for _, d in _rendered("device-plugin") if d["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["gpuCount"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="gpuCount"):
        kubernetes_validate.validate(job, "1.37", strict=True)
    claim = next(d for _, d in _rendered("dra") if d["kind"] == "ResourceClaim")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(claim, "1.33", strict=True)
    newest = kubernetes_validate.utils.latest_version()
    assert max(v for vs in SUPPORTED_KUBERNETES.values() for v in vs) == ".".join(
        newest.split(".")[:2]
    )
