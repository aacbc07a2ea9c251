"""The cluster half of the fake: a Job controller, a scheduler and a kubelet in one.

A created Job makes a Pod; the Pod is scheduled on the one fake node (or stays Pending with
``PodScheduled=False, reason=Unschedulable``); its container runs the Job's command as a local
process (``python`` becomes this interpreter, the pod's env is set, the working directory is
the repository so ``python -m pytest_kts.workers.run`` imports); its stdout and stderr become
the pod log; its exit sets the pod's phase, the container's terminated state, and the Job's status
conditions (``Complete`` or ``Failed`` with ``BackoffLimitExceeded``), with events on the way.

Failure modes are scripted per tenant and phase with :class:`PodBehaviour`. They are all on
the fake's side: the worker is never asked to misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import string
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_cluster.emulator import CLAIMS, JOBS, PODS, ClusterEmulator, rfc3339
from tests.fake_cluster.gpus import FakeGpus

META = b"KTS_META,v2,"


@dataclass(frozen=True)
class PodBehaviour:
    """How a pod of the fake cluster misbehaves (the default: it does not)."""

    unschedulable: bool = False  # stays Pending: PodScheduled False, reason Unschedulable
    image_pull_error: bool = False  # ErrImagePull, then ImagePullBackOff
    creating_s: float = 0.0  # ContainerCreating for this long: the log endpoint answers 400
    oom_after_lines: int | None = None  # SIGKILL after N log lines, reported as OOMKilled (137)
    crash_after_lines: int | None = None  # a traceback, then SIGKILL, reported as exit code 1
    hang_after_lines: int | None = None  # SIGSTOP after N lines: silent, never exits
    gpu_uuid: str | None = None  # written into the worker's KTS_META line
    chunk_bytes: int | None = None  # serve the log in chunks this small (lines split)
    drop_log_after_lines: int | None = None  # end the first follow stream early, once


@dataclass
class PodLog:
    """A container's log: (kubelet timestamp ns, line bytes) and whether it has ended."""

    chunk_bytes: int | None = None
    drop_after: int | None = None
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    started: bool = False
    finished: bool = False
    dropped: bool = False
    waiting_reason: str = "ContainerCreating"

    async def append(self, line: bytes) -> None:
        self.lines.append((time.time_ns(), line))
        async with self.changed:
            self.changed.notify_all()

    async def finish(self) -> None:
        self.finished = True
        async with self.changed:
            self.changed.notify_all()


def inject_gpu_uuid(line: bytes, gpu_uuid: str) -> bytes:
    """Rewrite a ``KTS_META`` line so that the worker appears to run on ``gpu_uuid``."""
    at = line.find(META)
    if at < 0:
        return line
    tenant, sep, payload = line[at + len(META) :].partition(b",")
    try:
        facts = json.loads(payload)
    except ValueError:
        return line
    facts.update(gpu_uuid=gpu_uuid, gpu_name=facts.get("gpu_name") or "Fake GPU", device="cuda")
    encoded = json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    return line[:at] + META + tenant + sep + encoded + b"\n"


def _now_condition(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    cond: dict[str, Any] = {"type": type_, "status": status, "lastTransitionTime": rfc3339()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


class Controller:
    """Turns Jobs into Pods and Pods into local processes, on the fake cluster's loop."""

    def __init__(
        self,
        emu: ClusterEmulator,
        *,
        workdir: Path,
        node_name: str,
        gpus_per_node: int,
        runtime_classes: set[str],
        gpus: FakeGpus | None = None,
        schedulers: set[str] | None = None,
    ) -> None:
        self.emu = emu
        self.gpus = gpus  # physical GPUs handed out by UUID (None: no UUIDs, as before)
        self.schedulers = schedulers or {"default-scheduler"}
        self.workdir = workdir
        self.node_name = node_name
        self.gpus_per_node = gpus_per_node
        self.runtime_classes = runtime_classes
        self.scripts: list[tuple[dict[str, str], PodBehaviour]] = []
        self.logs: dict[str, PodLog] = {}  # pod uid -> log
        self.procs: dict[str, asyncio.subprocess.Process] = {}  # pod uid -> process
        self.deleted: set[str] = set()  # pod uids
        self.gpus_in_use: dict[str, int] = {}  # pod uid -> GPUs
        self.tasks: set[asyncio.Task[Any]] = set()
        self.job_tasks: dict[str, asyncio.Task[Any]] = {}  # job uid -> its task
        self.started_pids: list[int] = []

    # -- scripting ------------------------------------------------------------------------

    def behaviour_for(self, pod: dict[str, Any]) -> PodBehaviour:
        labels = pod["metadata"].get("labels") or {}
        for match, behaviour in self.scripts:
            if all(labels.get(k) == v for k, v in match.items()):
                return behaviour
        return PodBehaviour()

    def log_of(self, pod: dict[str, Any]) -> PodLog | None:
        return self.logs.get(pod["metadata"]["uid"])

    # -- lifecycle ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def job_created(self, job: dict[str, Any]) -> None:
        self.job_tasks[job["metadata"]["uid"]] = self._spawn(self._run_job(job))

    def job_deleted(self, job: dict[str, Any]) -> None:
        # The pods decide (propagationPolicy): an orphaned pod runs on, so its task must too.
        self.job_tasks.pop(job["metadata"]["uid"], None)

    def claim_deleted(self, claim: dict[str, Any]) -> None:
        if self.gpus is not None:
            self.gpus.claim_deleted(claim["metadata"]["name"])

    async def pod_deleted(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        self.deleted.add(uid)
        self.gpus_in_use.pop(uid, None)
        if self.gpus is not None:
            self.gpus.release(uid)
        self._kill(uid)
        plog = self.logs.get(uid)
        if plog is not None:
            await plog.finish()

    def _kill(self, uid: str) -> None:
        proc = self.procs.get(uid)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def shutdown(self) -> None:
        """Kill every container, end every log, and wait for the tasks and processes."""
        for uid in list(self.procs):
            self._kill(uid)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
        for plog in self.logs.values():
            await plog.finish()

    # -- the Job controller ---------------------------------------------------------------

    async def _run_job(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        template = job["spec"]["template"]
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        pod_name = f"{name}-{suffix}"
        runtime = template["spec"].get("runtimeClassName")
        if runtime and runtime not in self.runtime_classes:
            await self.emu.record_event(
                job,
                "Warning",
                "FailedCreate",
                f'Error creating: pods "{pod_name}" is forbidden: pod rejected: RuntimeClass '
                f'"{runtime}" not found',
                "job-controller",
            )
            return
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        pod = await self.emu.create(
            PODS,
            {
                "metadata": {
                    "name": pod_name,
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": dict(template.get("metadata", {}).get("annotations") or {}),
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": name,
                            "uid": uid,
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": json.loads(json.dumps(template["spec"])),
                "status": {"phase": "Pending", "qosClass": "Burstable"},
            },
        )
        await self.emu.record_event(
            job, "Normal", "SuccessfulCreate", f"Created pod: {pod_name}", "job-controller"
        )

        def started(j: dict[str, Any]) -> None:
            j["status"].update(active=1, ready=0, startTime=rfc3339())

        await self.emu.modify(JOBS, namespace, name, started)
        deadline = job["spec"].get("activeDeadlineSeconds")
        watchdog = self._spawn(self._deadline(job, pod, deadline)) if deadline else None
        try:
            await self._run_pod(job, pod)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    async def _deadline(self, job: dict[str, Any], pod: dict[str, Any], seconds: float) -> None:
        await asyncio.sleep(float(seconds))
        uid = pod["metadata"]["uid"]
        self._kill(uid)
        await self._finish_job(
            job,
            ok=False,
            reason="DeadlineExceeded",
            message="Job was active longer than specified deadline",
        )

    async def _finish_job(
        self, job: dict[str, Any], *, ok: bool, reason: str, message: str
    ) -> None:
        meta = job["metadata"]

        def finish(j: dict[str, Any]) -> None:
            status = j["status"]
            if any(c.get("type") in ("Complete", "Failed") for c in status.get("conditions", [])):
                return
            status.update(active=0, ready=0)
            if ok:
                status.update(succeeded=1, completionTime=rfc3339())
                status["conditions"] = [
                    _now_condition(
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                    _now_condition(
                        "Complete",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                ]
            else:
                status.update(failed=1)
                status["conditions"] = [
                    _now_condition("FailureTarget", "True", reason, message),
                    _now_condition("Failed", "True", reason, message),
                ]

        await self.emu.modify(JOBS, meta["namespace"], meta["name"], finish)
        if ok:
            await self.emu.record_event(
                job, "Normal", "Completed", "Job completed", "job-controller"
            )
        else:
            await self.emu.record_event(job, "Warning", reason, message, "job-controller")

    # -- the scheduler and the kubelet ----------------------------------------------------

    def _unschedulable(self, pod: dict[str, Any], behaviour: PodBehaviour) -> str | None:
        spec = pod["spec"]
        node = (spec.get("nodeSelector") or {}).get("kubernetes.io/hostname")
        if node is not None and node != self.node_name:
            return (
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for "
                "scheduling."
            )
        wanted = sum(
            int((c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))
            for c in spec["containers"]
        )
        if wanted and sum(self.gpus_in_use.values()) + wanted > self.gpus_per_node:
            return "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        if behaviour.unschedulable:
            return (
                "0/1 nodes are available: 1 node(s) had untolerated taint "
                "{node.kubernetes.io/unschedulable: }. preemption: 0/1 nodes are available: "
                "1 Preemption is not helpful for scheduling."
            )
        return None

    async def _set_container(
        self, pod: dict[str, Any], state: dict[str, Any], **extra: Any
    ) -> None:
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]

        def change(p: dict[str, Any]) -> None:
            status = p["status"]
            status["containerStatuses"] = [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": f"docker.io/library/{container['image']}@sha256:{'0' * 64}"
                    if "running" in state or "terminated" in state
                    else "",
                    "ready": "running" in state,
                    "started": "running" in state,
                    "restartCount": 0,
                    "state": state,
                }
            ]
            for key, value in extra.items():
                if key == "conditions":
                    kept = [
                        c
                        for c in status.get("conditions", [])
                        if c["type"] not in {v["type"] for v in value}
                    ]
                    status["conditions"] = kept + value
                else:
                    status[key] = value

        await self.emu.modify(PODS, meta["namespace"], meta["name"], change)

    async def _run_pod(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        emu = self.emu
        meta = pod["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        behaviour = self.behaviour_for(pod)
        container = pod["spec"]["containers"][0]
        image = container["image"]
        await asyncio.sleep(0.02)
        if (pod["spec"].get("schedulerName") or "default-scheduler") not in self.schedulers:
            return  # no scheduler of that name: the pod stays Pending, with no condition at all
        why = self._unschedulable(pod, behaviour)
        placed = None
        if why is None and self.gpus is not None:
            claims = {c["metadata"]["name"]: c for c in self.emu.list(CLAIMS, namespace)}
            placed = self.gpus.place(pod, claims)
            why = placed.why
        if why is not None:

            def pending(p: dict[str, Any]) -> None:
                p["status"]["conditions"] = [
                    _now_condition("PodScheduled", "False", "Unschedulable", why)
                ]

            await emu.modify(PODS, namespace, name, pending)
            await emu.record_event(pod, "Warning", "FailedScheduling", why, "default-scheduler")
            return
        wanted = int((container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))
        if wanted:
            self.gpus_in_use[uid] = wanted

        def scheduled(p: dict[str, Any]) -> None:
            p["spec"]["nodeName"] = self.node_name
            p["status"]["conditions"] = [_now_condition("PodScheduled", "True")]
            p["status"]["hostIP"] = "10.0.0.1"

        await emu.modify(PODS, namespace, name, scheduled)
        await emu.record_event(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {namespace}/{name} to {self.node_name}",
            "default-scheduler",
        )
        plog = PodLog(chunk_bytes=behaviour.chunk_bytes, drop_after=behaviour.drop_log_after_lines)
        self.logs[uid] = plog
        await self._set_container(pod, {"waiting": {"reason": "ContainerCreating"}})
        if behaviour.image_pull_error:
            await self._pull_fails(pod, image, plog)
            return
        await emu.record_event(
            pod,
            "Normal",
            "Pulled",
            f'Container image "{image}" already present on machine',
            "kubelet",
        )
        if behaviour.creating_s:
            await asyncio.sleep(behaviour.creating_s)
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv and os.path.basename(argv[0]) in ("python", "python3"):
            argv[0] = sys.executable
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", [])})
        env.update(placed.env if placed is not None else {})  # what HAMi's plugin injects
        env["HOSTNAME"] = name
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            await self._terminated(job, pod, plog, 128, "StartError", str(exc))
            return
        self.procs[uid] = proc
        self.started_pids.append(proc.pid)
        started_at = rfc3339()
        await emu.record_event(
            pod, "Normal", "Created", f"Created container {container['name']}", "kubelet"
        )
        await emu.record_event(
            pod, "Normal", "Started", f"Started container {container['name']}", "kubelet"
        )
        plog.started = True
        await self._set_container(
            pod,
            {"running": {"startedAt": started_at}},
            phase="Running",
            startTime=started_at,
            conditions=[_now_condition("Ready", "True"), _now_condition("ContainersReady", "True")],
        )
        injected: str | None = None
        count = 0
        gpu_uuid = behaviour.gpu_uuid or (placed.uuid if placed is not None else None)
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if gpu_uuid:
                line = inject_gpu_uuid(line, gpu_uuid)
            await plog.append(line)
            count += 1
            if behaviour.oom_after_lines is not None and count >= behaviour.oom_after_lines:
                injected = "OOMKilled"
                self._kill(uid)
                break
            if behaviour.crash_after_lines is not None and count >= behaviour.crash_after_lines:
                injected = "crash"
                await plog.append(b"Traceback (most recent call last):\n")
                await plog.append(b"RuntimeError: crash injected by the fake cluster\n")
                self._kill(uid)
                break
            if behaviour.hang_after_lines is not None and count == behaviour.hang_after_lines:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGSTOP)
        returncode = await proc.wait()
        if uid in self.deleted:
            await plog.finish()
            return
        if injected == "OOMKilled":
            code, reason = 137, "OOMKilled"
        elif injected == "crash":
            code, reason = 1, "Error"
        elif returncode == 0:
            code, reason = 0, "Completed"
        else:
            code = 128 - returncode if returncode < 0 else returncode
            reason = "Error"
        await self._terminated(job, pod, plog, code, reason, "", started_at=started_at)

    async def _pull_fails(self, pod: dict[str, Any], image: str, plog: PodLog) -> None:
        emu = self.emu
        plog.waiting_reason = "trying and failing to pull image"
        message = (
            f'failed to pull and unpack image "docker.io/library/{image}": failed to '
            f'resolve reference "docker.io/library/{image}": not found'
        )
        await emu.record_event(pod, "Normal", "Pulling", f'Pulling image "{image}"', "kubelet")
        await emu.record_event(
            pod, "Warning", "Failed", f'Failed to pull image "{image}": {message}', "kubelet"
        )
        await emu.record_event(pod, "Warning", "Failed", "Error: ErrImagePull", "kubelet")
        await self._set_container(pod, {"waiting": {"reason": "ErrImagePull", "message": message}})
        await asyncio.sleep(0.1)
        await emu.record_event(
            pod, "Normal", "BackOff", f'Back-off pulling image "{image}"', "kubelet"
        )
        await emu.record_event(pod, "Warning", "Failed", "Error: ImagePullBackOff", "kubelet")
        await self._set_container(
            pod,
            {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{image}"',
                }
            },
        )

    async def _terminated(
        self,
        job: dict[str, Any],
        pod: dict[str, Any],
        plog: PodLog,
        code: int,
        reason: str,
        message: str,
        *,
        started_at: str | None = None,
    ) -> None:
        uid = pod["metadata"]["uid"]
        self.gpus_in_use.pop(uid, None)
        if self.gpus is not None:
            self.gpus.release(uid)
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started_at or rfc3339(),
            "finishedAt": rfc3339(),
            "containerID": f"containerd://{uid.replace('-', '')}",
        }
        if message:
            terminated["message"] = message
        phase = "Succeeded" if code == 0 else "Failed"
        await self._set_container(
            pod,
            {"terminated": terminated},
            phase=phase,
            conditions=[
                _now_condition("Ready", "False", "PodCompleted"),
                _now_condition("ContainersReady", "False", "PodCompleted"),
            ],
        )
        await plog.finish()
        if code == 0:
            await self._finish_job(job, ok=True, reason="", message="")
        else:
            await self._finish_job(
                job,
                ok=False,
                reason="BackoffLimitExceeded",
                message="Job has reached the specified backoff limit",
            )
