"""manifests/ and docker/, checked offline.

Kubernetes objects are validated by the ``kubernetes`` client's own models (generated from the
API's OpenAPI schema; ``model_validate`` rejects unknown fields and missing required ones).
The device plugin's sharing config, which is no Kubernetes object, is validated against a small
JSON Schema transcribed from k8s-device-plugin's ``api/config/v1`` types.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pytest_kts.constants import WORKER_MODULE

kubernetes = pytest.importorskip("kubernetes")

from pytest_kts.backends import kubernetes as kb  # noqa: E402
from pytest_kts.backends.base import TenantSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
DOCKERFILE = REPO / "docker" / "Dockerfile"

# Kind -> (apiVersion, model). Only kinds we ship: anything else in manifests/ is a mistake.
KINDS = {
    "Namespace": ("v1", kubernetes.client.V1Namespace),
    "ServiceAccount": ("v1", kubernetes.client.V1ServiceAccount),
    "ConfigMap": ("v1", kubernetes.client.V1ConfigMap),
    "Role": ("rbac.authorization.k8s.io/v1", kubernetes.client.V1Role),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", kubernetes.client.V1RoleBinding),
    "RuntimeClass": ("node.k8s.io/v1", kubernetes.client.V1RuntimeClass),
    "Job": ("batch/v1", kubernetes.client.V1Job),
}
NOT_OBJECTS = {"kustomization.yaml"}

# k8s-device-plugin api/config/v1: Config{version, flags, sharing{timeSlicing, mps}};
# ReplicatedResources{renameByDefault, failRequestsGreaterThanOne, resources};
# ReplicatedResource{name, rename, devices, replicas}.
REPLICATED = {
    "type": "object",
    "additionalProperties": False,
    "required": ["resources"],
    "properties": {
        "renameByDefault": {"type": "boolean"},
        "failRequestsGreaterThanOne": {"type": "boolean"},
        "resources": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "replicas"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9.-]+/[a-z0-9.-]+$"},
                    "rename": {"type": "string"},
                    "devices": {
                        "oneOf": [
                            {"const": "all"},
                            {"type": "integer", "minimum": 1},
                            {"type": "array", "items": {"type": ["string", "integer"]}},
                        ]
                    },
                    "replicas": {"type": "integer", "minimum": 1},
                },
            },
        },
    },
}
DEVICE_PLUGIN_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "sharing"],
    "properties": {
        "version": {"const": "v1"},
        "flags": {
            "type": "object",
            "properties": {"migStrategy": {"enum": ["none", "single", "mixed"]}},
        },
        "sharing": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {"timeSlicing": REPLICATED, "mps": REPLICATED},
        },
    },
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name not in NOT_OBJECTS)


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(MANIFESTS)}#{i}", doc)
        for path in manifest_files()
        for i, doc in enumerate(documents(path))
    ]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What breaks the "restricted" Pod Security Standard (the parts a Job could break)."""
    problems = []
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("host namespaces")
    if any("hostPath" in v for v in pod.get("volumes", [])):
        problems.append("hostPath volume")
    pod_sc = pod.get("securityContext", {})
    if pod_sc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("seccompProfile")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append("privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append("runAsNonRoot")
        if (sc.get("runAsUser", pod_sc.get("runAsUser")) or 1) == 0:
            problems.append("runAsUser 0")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append("capabilities.drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append("capabilities.add")
    return problems


@pytest.mark.parametrize(
    ("where", "doc"), all_objects(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_manifest_is_a_valid_object_of_its_kind(where: str, doc: dict[str, Any]) -> None:
    kind = doc.get("kind")
    assert kind in KINDS, f"{where}: unexpected kind {kind!r}"
    api_version, model = KINDS[kind]
    assert doc["apiVersion"] == api_version, where
    model.model_validate(doc)  # the API schema: required fields, types, no unknown fields
    name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, where
    assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pytest-kts", where


def test_a_typo_would_be_caught() -> None:
    """The validation above is not vacuous: an unknown or missing field fails it."""
    job = documents(MANIFESTS / "job-template.yaml")[0]
    job["spec"]["backofLimit"] = 0
    with pytest.raises(ValueError, match="backofLimit"):
        kubernetes.client.V1Job.model_validate(job)
    role = next(d for d in documents(MANIFESTS / "rbac.yaml") if d["kind"] == "Role")
    del role["rules"][0]["verbs"]
    with pytest.raises(ValueError, match="verbs"):
        kubernetes.client.V1Role.model_validate(role)


def test_the_job_template_file_is_what_the_backend_uses() -> None:
    assert documents(MANIFESTS / "job-template.yaml") == [kb.job_template()]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("phase", ["solo", "shared"])
def test_rendered_jobs_are_valid_and_restricted(device: str, phase: str) -> None:
    settings = kb.ClusterSettings(node="node-1" if device == "cuda" else None)
    tenant = TenantSpec("Tenant_1", "decode", 512, sleep_ms=5, params={"layers": "2"})
    job = kb.render_job(
        settings, tenant, device=device, name=kb.job_name(settings.run_id, 1, phase, tenant.name),
        phase=phase, round=1, iterations=500,
        start_at_ns=10**18 if phase == "shared" else None,
        min_duration_s=3.0 if phase == "shared" else None,
    )  # fmt: skip
    kubernetes.client.V1Job.model_validate(job)
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False  # a worker needs no API access
    limits = pod["containers"][0]["resources"].get("limits", {})
    assert ("nvidia.com/gpu" in limits) == (device == "cuda")


def test_the_restricted_check_is_not_vacuous() -> None:
    pod = kb.job_template()["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    bad = {**pod, "hostIPC": True, "containers": [{**pod["containers"][0], "securityContext": {}}]}
    assert {"host namespaces", "allowPrivilegeEscalation", "capabilities.drop ALL"} <= set(
        restricted_violations(bad)
    )


def test_rbac_is_least_privilege() -> None:
    docs = documents(MANIFESTS / "rbac.yaml")
    assert sorted(d["kind"] for d in docs) == ["Role", "RoleBinding", "ServiceAccount"]
    for _, doc in all_objects():
        assert doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"), "no cluster-wide RBAC"
    by_kind = {d["kind"]: d for d in docs}
    namespace = kb.ClusterSettings().namespace
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}
    rules = by_kind["Role"]["rules"]
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {key}"
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"get", "list", "watch"},
    }
    binding = by_kind["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": by_kind["Role"]["metadata"]["name"],
    }
    account = by_kind["ServiceAccount"]["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


@pytest.mark.parametrize(
    ("file", "strategy"), [("time-slicing.yaml", "timeSlicing"), ("mps.yaml", "mps")]
)
def test_device_plugin_sharing_configs(file: str, strategy: str) -> None:
    (config_map,) = documents(MANIFESTS / "device-plugin" / file)
    assert config_map["kind"] == "ConfigMap"
    assert "namespace" not in config_map["metadata"]  # applied with -n <plugin namespace>
    assert list(config_map["data"]) == ["any"]  # the name passed as config.default
    config = yaml.safe_load(config_map["data"]["any"])
    jsonschema.validate(config, DEVICE_PLUGIN_CONFIG)
    sharing = config["sharing"][strategy]
    assert sharing["renameByDefault"] is False
    assert sharing["failRequestsGreaterThanOne"] is True
    assert sharing["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**config, "sharing": {strategy: {"resource": []}}}, DEVICE_PLUGIN_CONFIG
        )


def test_runtime_class_and_namespace_match_the_defaults() -> None:
    defaults = kb.ClusterSettings()
    (runtime,) = documents(MANIFESTS / "runtimeclass.yaml")
    assert runtime["metadata"]["name"] == defaults.runtime_class
    assert runtime["handler"] == "nvidia"
    (namespace,) = documents(MANIFESTS / "namespace.yaml")
    assert namespace["metadata"]["name"] == defaults.namespace
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_kustomization_lists_files_that_exist() -> None:
    (kustomization,) = documents(MANIFESTS / "kustomization.yaml")
    assert kustomization["resources"]
    for name in kustomization["resources"]:
        assert (MANIFESTS / name).is_file(), name


def test_dockerfile_builds_a_non_root_cuda_worker() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    base = next(line for line in lines if line.startswith("ARG BASE="))
    assert "cuda" in base and not base.endswith(":latest")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the image must not run as root"
    uid, _, gid = users[-1].partition(":")
    pod_sc = kb.job_template()["spec"]["template"]["spec"]["securityContext"]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it
    assert int(uid) == pod_sc["runAsUser"] and int(gid or uid) == pod_sc["runAsGroup"]
    copied = " ".join(line for line in lines if line.startswith("COPY "))
    assert "workers" in copied and "pytest_kts" in copied
    assert not any(line.startswith("ADD ") for line in lines)
    assert any(WORKER_MODULE in line for line in lines if line.startswith("RUN "))
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!workers/" in ignore and "!pytest_kts/" in ignore


# --------------------------------------------------------------------------- hardening


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("source", ["template", "rendered-cpu", "rendered-cuda"])
def test_the_root_filesystem_is_read_only_with_emptydirs_for_tmp_and_caches(source: str) -> None:
    if source == "template":
        job = documents(MANIFESTS / "job-template.yaml")[0]
    else:
        device = source.rpartition("-")[2]
        job = kb.render_job(
            kb.ClusterSettings(), TenantSpec("a", "fft", 64), device=device, name="kts-x",
            phase="solo", round=0, iterations=10,
        )  # fmt: skip
    pod = job["spec"]["template"]["spec"]
    container = _container(job)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    for name in mounts.values():
        assert set(volumes[name]) == {"name", "emptyDir"}, name  # nothing from the host
        assert volumes[name]["emptyDir"]["sizeLimit"]
    env = {e["name"]: e["value"] for e in container["env"]}
    for key in ("HOME", "XDG_CACHE_HOME", "TORCH_HOME", "CUDA_CACHE_PATH", "TRITON_CACHE_DIR"):
        assert any(env[key] == m or env[key].startswith(m + "/") for m in mounts), key
    resources = container["resources"]
    assert resources["limits"]["ephemeral-storage"]
    assert resources["requests"]["ephemeral-storage"]
    assert resources["limits"]["memory"]  # the settings' memory limit still applies


def test_the_base_image_is_pinned_by_digest_with_its_tag_in_a_comment() -> None:
    text = DOCKERFILE.read_text()
    base = next(line for line in text.splitlines() if line.startswith("ARG BASE="))
    image = base.partition("=")[2]
    name, at, digest = image.partition("@")
    assert at and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image
    assert ":" in name and not name.endswith(":latest")
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any(name in line for line in comments), "a comment must give the digest's tag"


def test_worker_dependencies_are_pinned() -> None:
    requirements = (REPO / "docker" / "requirements-worker.txt").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in requirements]
    pins = [p for p in pins if p]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", p) for p in pins)
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for install in re.findall(r"pip install ([^&\n]+)", text):
        words = [w for w in install.split() if not w.startswith("-")]
        # Only this project itself (".") or the pinned requirements file: nothing unpinned.
        assert words in (["."], ["docker/requirements-worker.txt"]), install


def test_the_default_image_is_the_package_version_not_latest() -> None:
    import pytest_kts
    from pytest_kts.config import OPTIONS, RunSettings

    expected = f"pytest-kts-worker:{pytest_kts.__version__}"
    option = next(o for o in OPTIONS if o.name == "image")
    assert option.default == expected
    assert RunSettings().image == expected
    assert kb.ClusterSettings().image == expected
    assert _container(kb.job_template())["image"] == expected
    assert f"-t {expected} ." in DOCKERFILE.read_text()


def test_the_wheel_ships_the_job_template(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys
    import zipfile

    # A copy of the sources (the package's template is a relative link into manifests/), so
    # that setuptools' build/ and egg-info land there, not in the repository.
    source = tmp_path / "src"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("pytest_kts", "workers"):
        shutil.copytree(REPO / folder, source / folder, symlinks=True, ignore=junk)
    (source / "manifests").mkdir()
    for name in ("pyproject.toml", "README.md", "manifests/job-template.yaml"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("pytest_kts-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("pytest_kts/backends/kubernetes/job-template.yaml")
    assert shipped == (MANIFESTS / "job-template.yaml").read_bytes()
