"""The fake node's physical GPUs and the sharing systems that hand them out.

A pod gets a GPU UUID (written into its worker's ``KTS_META`` line, as a real worker would
print the GPU it got) by the rules of the system it asked:

- ``nvidia.com/gpu`` (the device plugin's replicas): the least-used GPU, as the plugin's
  default ``distributed`` policy does, so two pods on a multi-GPU node land apart;
- the same under HAMi (``hami=True``) with ``hami.io/gpu-scheduler-policy: binpack``: the
  most-used GPU with the ``nvidia.com/gpucores`` asked for still free, and the container gets
  HAMi's variables (``CUDA_DEVICE_SM_LIMIT``, ``CUDA_DEVICE_MEMORY_LIMIT_0``) as HAMi's
  device plugin injects them;
- ``schedulerName: kai-scheduler`` with a ``gpu-fraction`` annotation (when the fake runs
  KAI): the most-used GPU with that fraction free;
- a ``resourceClaimName`` (DRA, ``dra=True``): the claim's GPU, allocated when its first pod
  is placed (a GPU no other claim holds) and freed when the claim is deleted. Every pod of a
  claim gets the same UUID.

What cannot be placed is a reason, as the scheduler would write it in ``PodScheduled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HAMI_CORES, HAMI_MEMORY = "nvidia.com/gpucores", "nvidia.com/gpumem"


@dataclass
class Placement:
    uuid: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    why: str | None = None  # unschedulable, and why


@dataclass
class FakeGpus:
    uuids: tuple[str, ...]
    hami: bool = False
    dra_classes: tuple[str, ...] = ()  # DeviceClasses the fake DRA driver serves
    pods: dict[str, tuple[str, float]] = field(default_factory=dict)  # pod uid -> (uuid, share)
    claims: dict[str, str | None] = field(default_factory=dict)  # claim name -> uuid

    def _used(self, uuid: str) -> float:
        return sum(share for held, share in self.pods.values() if held == uuid)

    def _count(self, uuid: str) -> int:
        return sum(1 for held, _ in self.pods.values() if held == uuid)

    def _packed(self, share: float) -> str | None:
        fits = [u for u in self.uuids if self._used(u) + share <= 1.0 + 1e-9]
        return max(fits, key=self._used) if fits else None

    def place(self, pod: dict[str, Any], claims: dict[str, dict[str, Any]]) -> Placement:
        uid = pod["metadata"]["uid"]
        spec = pod["spec"]
        limits = (spec["containers"][0].get("resources") or {}).get("limits") or {}
        annotations = pod["metadata"].get("annotations") or {}
        for ref in spec.get("resourceClaims") or []:
            name = ref.get("resourceClaimName")
            if name:
                return self._place_claim(uid, name, claims)
        if spec.get("schedulerName") == "kai-scheduler":
            share = float(annotations.get("gpu-fraction", "1"))
            uuid = self._packed(share)
            if uuid is None:
                return Placement(why=f"0/1 nodes are available: no GPU with {share:g} free")
            self.pods[uid] = (uuid, share)
            return Placement(uuid)
        if "nvidia.com/gpu" not in limits:
            return Placement()
        hami_asks = HAMI_CORES in limits or HAMI_MEMORY in limits
        if hami_asks and not self.hami:
            asked = HAMI_CORES if HAMI_CORES in limits else HAMI_MEMORY
            return Placement(why=f"0/1 nodes are available: 1 Insufficient {asked}.")
        if self.hami:
            share = int(limits.get(HAMI_CORES, 100)) / 100
            binpack = annotations.get("hami.io/gpu-scheduler-policy") == "binpack"
            if binpack:
                uuid = self._packed(share)
            else:
                fits = [u for u in self.uuids if self._used(u) + share <= 1.0 + 1e-9]
                uuid = min(fits, key=self._used) if fits else None
            if uuid is None:
                return Placement(why="0/1 nodes are available: 1 node(s) no GPU with the cores")
            self.pods[uid] = (uuid, share)
            env = {"CUDA_DEVICE_SM_LIMIT": str(limits.get(HAMI_CORES, 0))}
            if HAMI_MEMORY in limits:
                env["CUDA_DEVICE_MEMORY_LIMIT_0"] = f"{limits[HAMI_MEMORY]}m"
            return Placement(uuid, env)
        uuid = min(self.uuids, key=lambda u: (self._count(u), self.uuids.index(u)))
        self.pods[uid] = (uuid, 0.0)
        return Placement(uuid)

    def _place_claim(self, uid: str, name: str, claims: dict[str, dict[str, Any]]) -> Placement:
        claim = claims.get(name)
        if claim is None:
            return Placement(why=f'0/1 nodes are available: resourceclaim "{name}" not found')
        if self.claims.get(name) is None:
            requests = claim["spec"]["devices"]["requests"]
            wanted = requests[0].get("exactly", {}).get("deviceClassName")
            if wanted not in self.dra_classes:
                return Placement(why=f'0/1 nodes are available: deviceclass "{wanted}" not found')
            held = {u for u in self.claims.values() if u is not None}
            free = [u for u in self.uuids if u not in held]
            if not free:
                return Placement(why="0/1 nodes are available: cannot allocate all claims")
            self.claims[name] = free[0]
        uuid = self.claims[name]
        self.pods[uid] = (str(uuid), 0.0)
        return Placement(uuid)

    def release(self, uid: str) -> None:
        self.pods.pop(uid, None)

    def claim_deleted(self, name: str) -> None:
        self.claims.pop(name, None)
