"""How a worker pod asks for its GPU, one way per sharing system (``--kts-gpu-request``):

- ``device-plugin``: ``nvidia.com/gpu: 1``, one replica of a GPU that the NVIDIA device plugin
  time-slices (or shares by MPS): the default, as before;
- ``dra``: Dynamic Resource Allocation (``resource.k8s.io/v1``, Kubernetes 1.34+, NVIDIA's
  ``k8s-dra-driver-gpu``): one ResourceClaim per phase with ``deviceClassName`` and, when a
  sharing strategy is asked for, the driver's opaque ``GpuConfig``. Every pod of a phase names
  that claim, so the tenants of a shared phase get the one GPU by construction; a solo phase
  gets a claim of its own. The claim is deleted when its phase ends (that frees the GPU);
- ``hami``: HAMi's limits, ``nvidia.com/gpu: 1`` with ``nvidia.com/gpucores`` (percent of
  the SMs) and ``nvidia.com/gpumem`` (MiB), and its ``binpack`` policies so co-tenants are
  put on one GPU; HAMi's scheduler and webhook do the rest;
- ``kai``: the KAI scheduler, ``schedulerName: kai-scheduler``, a ``gpu-fraction`` annotation
  and the ``kai.scheduler/queue`` label; no ``nvidia.com/gpu`` (KAI reserves the GPU itself).
  Fractions are a scheduling promise only: nothing enforces them on the GPU.

Field names are those of the projects' own examples: the DRA driver's
``demo/specs/quickstart/v1`` and ``api/nvidia.com/resource/v1beta1`` (``GpuConfig``,
``GpuSharing``, ``TimeSlicingConfig.interval``, ``MpsConfig``), HAMi's ``examples/nvidia``
and ``pkg/util/types.go``, KAI's ``docs/gpu-sharing``. Whatever the mode, every worker still
prints its GPU's UUID and a shared phase on two GPUs is a ``ColocationError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pytest_kts.constants import DRA_INTERVALS, DRA_SHARING, GPU_REQUESTS
from pytest_kts.errors import ConfigError

DRA_API = "resource.k8s.io/v1"
DRA_GROUP, DRA_VERSION, DRA_PLURAL = "resource.k8s.io", "v1", "resourceclaims"
DRA_DRIVER = "gpu.nvidia.com"  # the driver the opaque config is for (k8s-dra-driver-gpu)
DRA_CONFIG_API = "resource.nvidia.com/v1beta1"
DRA_REQUEST = "gpu"  # the request's name in the claim, and the claim's name in the pod
HAMI_CORES, HAMI_MEMORY = "nvidia.com/gpucores", "nvidia.com/gpumem"
HAMI_POLICIES = {
    "hami.io/gpu-scheduler-policy": "binpack",
    "hami.io/node-scheduler-policy": "binpack",
}
KAI_SCHEDULER = "kai-scheduler"
KAI_FRACTION = "gpu-fraction"
KAI_QUEUE_LABEL = "kai.scheduler/queue"
KAI_DEFAULT_FRACTION = 0.5
KAI_DEFAULT_QUEUE = "default-queue"
# Kubernetes versions whose official schemas every rendered manifest is checked against
# (tests/test_manifest_schemas.py): the oldest and newest supported, per mode.
SUPPORTED_KUBERNETES = {
    "device-plugin": ("1.29", "1.37"),
    "dra": ("1.34", "1.37"),  # resource.k8s.io/v1
    "hami": ("1.29", "1.37"),
    "kai": ("1.29", "1.37"),
}
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")

# Which option belongs to which mode, for the error that names a misplaced one.
_OPTION_MODE = {
    "dra_interval": "dra",
    "dra_mps_threads": "dra",
    "dra_mps_memory": "dra",
    "hami_cores": "hami",
    "hami_memory": "hami",
    "kai_fraction": "kai",
    "kai_queue": "kai",
}


def _flag(name: str) -> str:
    return "--kts-" + name.replace("_", "-")


@dataclass(frozen=True)
class GpuRequest:
    """The GPU request of every worker pod, and for DRA the claim each phase creates."""

    mode: str = "device-plugin"
    resource: str = "nvidia.com/gpu"  # the device plugin's extended resource
    dra_device_class: str = "gpu.nvidia.com"
    dra_sharing: str = "default"  # default: no GpuConfig, the driver decides
    dra_interval: str | None = None  # TimeSlicing: Default | Short | Medium | Long
    dra_mps_threads: int | None = None  # MPS: defaultActiveThreadPercentage
    dra_mps_memory: str | None = None  # MPS: defaultPinnedDeviceMemoryLimit (a quantity)
    hami_cores: int | None = None  # nvidia.com/gpucores, percent
    hami_memory: int | None = None  # nvidia.com/gpumem, MiB
    kai_fraction: float | None = None  # gpu-fraction, default 0.5
    kai_queue: str | None = None  # kai.scheduler/queue, default "default-queue"

    def __post_init__(self) -> None:
        if self.mode not in GPU_REQUESTS:
            raise ConfigError(
                f"GPU request {self.mode!r} is not one of {', '.join(GPU_REQUESTS)}: "
                "fix --kts-gpu-request"
            )
        for name, mode in _OPTION_MODE.items():
            if getattr(self, name) is not None and self.mode != mode:
                raise ConfigError(
                    f"{_flag(name)} is for --kts-gpu-request {mode}, and this run asks with "
                    f"{self.mode}: drop it or pass --kts-gpu-request {mode}"
                )
        if self.mode == "dra":
            self._check_dra()
        if self.hami_cores is not None and not 1 <= self.hami_cores <= 100:
            raise ConfigError(f"--kts-hami-cores must be 1..100 (percent), got {self.hami_cores}")
        if self.hami_memory is not None and self.hami_memory <= 0:
            raise ConfigError(f"--kts-hami-memory must be > 0 MiB, got {self.hami_memory}")
        if self.kai_fraction is not None and not 0 < self.kai_fraction <= 1:
            raise ConfigError(f"--kts-kai-fraction must be in (0, 1], got {self.kai_fraction}")

    def _check_dra(self) -> None:
        if self.dra_sharing not in DRA_SHARING:
            raise ConfigError(
                f"--kts-dra-sharing {self.dra_sharing!r} is not one of {', '.join(DRA_SHARING)}"
            )
        if not self.dra_device_class.strip():
            raise ConfigError("--kts-dra-device-class is empty (NVIDIA's is gpu.nvidia.com)")
        if self.dra_interval is not None:
            if self.dra_sharing != "timeslicing":
                raise ConfigError("--kts-dra-interval needs --kts-dra-sharing timeslicing")
            if self.dra_interval not in DRA_INTERVALS:
                raise ConfigError(
                    f"--kts-dra-interval {self.dra_interval!r} is not one of "
                    f"{', '.join(DRA_INTERVALS)}"
                )
        mps = (self.dra_mps_threads, self.dra_mps_memory)
        if any(v is not None for v in mps) and self.dra_sharing != "mps":
            raise ConfigError(
                "--kts-dra-mps-threads and --kts-dra-mps-memory need --kts-dra-sharing mps"
            )
        if self.dra_mps_threads is not None and not 1 <= self.dra_mps_threads <= 100:
            raise ConfigError(
                f"--kts-dra-mps-threads must be 1..100 (percent), got {self.dra_mps_threads}"
            )
        if self.dra_mps_memory is not None and not _QUANTITY.match(self.dra_mps_memory):
            raise ConfigError(
                f"--kts-dra-mps-memory {self.dra_mps_memory!r} is not a quantity (e.g. 10Gi)"
            )

    # -- what it asks for -----------------------------------------------------------------

    @property
    def claims_per_phase(self) -> bool:
        """Whether each phase creates a ResourceClaim that its pods share (DRA)."""
        return self.mode == "dra"

    def gpu_config(self) -> dict[str, Any] | None:
        """The DRA driver's opaque ``GpuConfig`` for the claim; None for the driver's default."""
        if self.dra_sharing == "timeslicing":
            sharing: dict[str, Any] = {"strategy": "TimeSlicing"}
            if self.dra_interval:
                sharing["timeSlicingConfig"] = {"interval": self.dra_interval}
        elif self.dra_sharing == "mps":
            sharing = {"strategy": "MPS"}
            mps: dict[str, Any] = {}
            if self.dra_mps_threads is not None:
                mps["defaultActiveThreadPercentage"] = self.dra_mps_threads
            if self.dra_mps_memory is not None:
                mps["defaultPinnedDeviceMemoryLimit"] = self.dra_mps_memory
            if mps:
                sharing["mpsConfig"] = mps
        else:
            return None
        return {"apiVersion": DRA_CONFIG_API, "kind": "GpuConfig", "sharing": sharing}

    def resource_claim(self, name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
        """The ResourceClaim one phase's pods share (DRA only)."""
        request = {"name": DRA_REQUEST, "exactly": {"deviceClassName": self.dra_device_class}}
        devices: dict[str, Any] = {"requests": [request]}
        config = self.gpu_config()
        if config is not None:
            devices["config"] = [
                {"requests": [DRA_REQUEST], "opaque": {"driver": DRA_DRIVER, "parameters": config}}
            ]
        return {
            "apiVersion": DRA_API,
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"devices": devices},
        }

    def apply(
        self,
        pod: dict[str, Any],
        metadata: dict[str, Any],
        requests: dict[str, str],
        limits: dict[str, str],
        claim: str | None = None,
    ) -> None:
        """Ask for the GPU in a pod spec: its resources, claims, scheduler, annotations."""
        if self.mode == "device-plugin":
            # Extended resources: request == limit. One replica of a shared GPU.
            requests[self.resource] = limits[self.resource] = "1"
        elif self.mode == "hami":
            limits[self.resource] = requests[self.resource] = "1"
            if self.hami_cores is not None:
                limits[HAMI_CORES] = str(self.hami_cores)
            if self.hami_memory is not None:
                limits[HAMI_MEMORY] = str(self.hami_memory)
            metadata.setdefault("annotations", {}).update(HAMI_POLICIES)
        elif self.mode == "kai":
            pod["schedulerName"] = KAI_SCHEDULER
            fraction = KAI_DEFAULT_FRACTION if self.kai_fraction is None else self.kai_fraction
            metadata.setdefault("annotations", {})[KAI_FRACTION] = f"{fraction:g}"
            metadata.setdefault("labels", {})[KAI_QUEUE_LABEL] = self.kai_queue or KAI_DEFAULT_QUEUE
        else:  # dra
            if not claim:
                raise ConfigError("a DRA pod needs its phase's ResourceClaim")
            pod["resourceClaims"] = [{"name": DRA_REQUEST, "resourceClaimName": claim}]
            pod["containers"][0].setdefault("resources", {})["claims"] = [{"name": DRA_REQUEST}]
        pod["tolerations"] = [{"key": self.resource, "operator": "Exists", "effect": "NoSchedule"}]

    # -- what it says ---------------------------------------------------------------------

    def describe(self) -> str:
        """One line for the report: what each pod asked for."""
        if self.mode == "device-plugin":
            return f"device plugin: {self.resource}: 1"
        if self.mode == "hami":
            parts = [f"{self.resource}: 1"]
            if self.hami_cores is not None:
                parts.append(f"{HAMI_CORES}: {self.hami_cores}")
            if self.hami_memory is not None:
                parts.append(f"{HAMI_MEMORY}: {self.hami_memory}")
            return "HAMi: " + ", ".join(parts)
        if self.mode == "kai":
            fraction = KAI_DEFAULT_FRACTION if self.kai_fraction is None else self.kai_fraction
            return f"KAI: {KAI_FRACTION} {fraction:g}, queue {self.kai_queue or KAI_DEFAULT_QUEUE}"
        config = self.gpu_config()
        how = "the driver's default sharing"
        if config is not None:
            sharing = config["sharing"]
            extra = sharing.get("timeSlicingConfig") or sharing.get("mpsConfig") or {}
            how = sharing["strategy"] + "".join(f", {k} {v}" for k, v in extra.items())
        return f"DRA: one ResourceClaim per phase, class {self.dra_device_class}, {how}"

    def unschedulable_hint(self) -> str:
        """What to check when no node takes a worker pod."""
        if self.mode == "dra":
            return (
                f"no node can allocate the phase's claim: check that the DRA driver publishes "
                f"devices (kubectl get resourceslices), that DeviceClass "
                f"{self.dra_device_class!r} exists, and that no other claim holds the GPU"
            )
        if self.mode == "hami":
            return (
                "HAMi found no GPU with the cores and memory asked for free: check "
                "kubectl describe node (hami.io annotations) and the other pods' requests"
            )
        if self.mode == "kai":
            return (
                f"KAI found no GPU with {KAI_FRACTION} free: check that KAI runs with "
                f"global.gpuSharing=true and that queue {self.kai_queue or KAI_DEFAULT_QUEUE!r} "
                "exists"
            )
        return (
            f"no node can take it: check that a node offers {self.resource} (time-slicing "
            "replicas, the device plugin's config), that --kts-node names a real node, and "
            "that enough replicas are free"
        )

    def no_gpu_hint(self) -> str:
        """What to check when the worker in the pod saw no GPU."""
        if self.mode == "dra":
            return (
                "the pod saw no GPU: check that the DRA driver prepared the claim (its "
                "kubelet plugin's log) and that containerd has CDI enabled"
            )
        return (
            "the pod saw no GPU: check the RuntimeClass (--kts-runtime-class) and that "
            f"the node's {'device plugin' if self.mode == 'device-plugin' else self.mode} "
            f"offers {self.resource}"
        )
