"""Kubernetes runner: each job attempt becomes a batch/v1 Job running the same worker module.

``backoffLimit: 0`` because retries belong to the service (it resumes from the last checkpoint
and counts attempts); a new attempt is a new Job. The pod is locked down to the "restricted"
Pod Security profile. The worker's config travels in an env var (the service's own volume is
ReadWriteOnce); the job folders go to ``checkpoint_claim`` when one is configured (the k8s
base ships a ReadWriteMany claim, so a new attempt on another node resumes from the newest
checkpoint), else to an emptyDir that dies with the pod. The service reads the checkpoints
where the pods wrote them: on the claim, which the k8s base mounts into the trainer too
(``k8s_checkpoint_mount``).

One attempt at a time: a new attempt first deletes the Jobs of earlier ones (a trainer that
crashed leaves them running, and two workers would write one job folder). A deleted Job ends its
worker as a kill would, so a cancel or a ``kubectl delete`` while the pod is still Pending ends
the attempt too.

Building the manifest is pure and unit tested. Creating and following a Job needs the optional
``kubernetes`` client and a cluster; without the client ``start`` refuses with the manifest
written beside the job so it can be applied by hand.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition, TuneplexError, Unavailable
from services.common.k8s_schema import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    TRAINER_JOB_LABELS,
)
from services.trainer.checkpoints import CheckpointInfo, complete_checkpoints
from services.trainer.runners.deepspeed import zero_config
from services.trainer.worker.protocol import (
    ATTEMPT_ENV,
    CHECKPOINTS_DIR,
    CONFIG_ENV,
    CONFIG_FILE,
    DEEPSPEED_ENV,
    GATEWAY_KEY_ENV,
    LOG_FILE,
    PAUSE_GRACE_SECONDS,
    REGISTRY_KEY_ENV,
    launch_command,
    parse_event_line,
)

WORK_MOUNT = "/var/lib/tuneplex"
JOB_ID_LABEL = "tuneplex.dev/job-id"
# Set by the Job controller on the pods of a Job (the unprefixed `job-name` is the legacy twin).
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# What a deleted Job's worker counts as: killed, like a local worker sent SIGTERM.
DELETED_EXIT = -signal.SIGTERM
# How long a new attempt waits for an earlier attempt's pod to go (its grace period and more).
EARLIER_ATTEMPT_DELETE_SECONDS = PAUSE_GRACE_SECONDS + 60


def pod_job_dir(job_id: str) -> str:
    """The job folder in a Job pod (on the claim, mounted at ``WORK_MOUNT``)."""
    return f"{WORK_MOUNT}/jobs/{job_id}"


def job_name(job_id: str, attempt: int) -> str:
    return f"tuneplex-{job_id}-a{attempt}"[:63].rstrip("-")


def build_job_manifest(
    *,
    job_id: str,
    attempt: int,
    worker_config: dict,
    namespace: str,
    image: str,
    service_account: str,
    num_gpus: int,
    zero_stage: int,
    gpu_resource: str,
    memory_bytes: int,
    cpus: int,
    checkpoint_claim: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict] | None = None,
) -> dict:
    """The batch/v1 Job of one attempt of ``job_id``."""
    command = launch_command("python", pod_job_dir(job_id), num_gpus)
    labels = {"app.kubernetes.io/name": "tuneplex", **TRAINER_JOB_LABELS, JOB_ID_LABEL: job_id}
    memory_mib = max(2048, -(-memory_bytes // (1024 * 1024)))
    # One CPU requested so a busy cluster still schedules the pod; the limit is what its
    # training threads size themselves to.
    resources: dict = {
        "requests": {"cpu": "1", "memory": f"{memory_mib}Mi"},
        "limits": {"cpu": str(cpus), "memory": f"{memory_mib}Mi"},
    }
    if num_gpus:
        resources["requests"][gpu_resource] = str(num_gpus)
        resources["limits"][gpu_resource] = str(num_gpus)
    env = [
        {"name": CONFIG_ENV, "value": json.dumps(worker_config)},
        # One API key for the stack (as the k8s base deploys it): registry and gateway alike.
        *(
            {
                "name": env,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": "tuneplex-api-key",
                        "key": "api-key",
                        "optional": True,
                    }
                },
            }
            for env in (REGISTRY_KEY_ENV, GATEWAY_KEY_ENV)
        ),
        {"name": ATTEMPT_ENV, "value": str(attempt)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    if num_gpus > 1:
        env.append({"name": DEEPSPEED_ENV, "value": json.dumps(zero_config(zero_stage))})
    work_volume = (
        {"name": "work", "persistentVolumeClaim": {"claimName": checkpoint_claim}}
        if checkpoint_claim
        else {"name": "work", "emptyDir": {}}
    )
    pod_security = copy.deepcopy(POD_SECURITY_CONTEXT)
    if checkpoint_claim:
        # The claim holds every job's checkpoints: without this the kubelet would chown all of
        # it at each pod start.
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"
    pod_spec: dict = {
        "restartPolicy": "Never",
        # A deleted pod gets SIGTERM; a pausing worker needs this long to commit its checkpoint
        # (Kubernetes' default of 30 s would kill a slow save). A cancel waits for the same end
        # of step and save before the pod is gone; a stop request never reaches publishing
        # (EventCallback.on_train_end).
        "terminationGracePeriodSeconds": PAUSE_GRACE_SECONDS,
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": pod_security,
        "containers": [
            {
                "name": "worker",
                "image": image,
                "command": command,
                "env": env,
                "resources": resources,
                "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
                "volumeMounts": [
                    {"name": "work", "mountPath": WORK_MOUNT},
                    {"name": "tmp", "mountPath": "/tmp"},
                    # NCCL and the dataloader need more shared memory than the 64 MiB default.
                    {"name": "shm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            work_volume,
            {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = list(tolerations)
    elif num_gpus:  # GPU nodes are usually tainted for their resource
        pod_spec["tolerations"] = [
            {"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(job_id, attempt), "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def job_manifest_for(
    settings: Any,
    *,
    job_id: str,
    attempt: int,
    worker_config: dict,
    num_gpus: int,
    zero_stage: int,
    memory_bytes: int,
) -> dict:
    """The Job of one attempt as the trainer's ``TUNEPLEX_TRAINER_K8S_*`` settings shape it."""
    return build_job_manifest(
        job_id=job_id,
        attempt=attempt,
        worker_config=worker_config,
        namespace=settings.k8s_namespace,
        image=settings.k8s_image,
        service_account=settings.k8s_service_account,
        num_gpus=num_gpus,
        zero_stage=zero_stage,
        gpu_resource=settings.k8s_gpu_resource,
        memory_bytes=memory_bytes,
        cpus=settings.k8s_cpus,
        checkpoint_claim=settings.k8s_checkpoint_claim,
        node_selector=settings.k8s_node_selector,
        tolerations=settings.k8s_tolerations,
    )


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 404


async def _read_job(batch, namespace: str, name: str):
    """The Job, or None once it is gone."""
    try:
        return await asyncio.to_thread(batch.read_namespaced_job, name, namespace)
    except Exception as exc:
        if _is_not_found(exc):
            return None
        raise


async def _delete_job(batch, namespace: str, name: str, grace_seconds: float) -> None:
    """Delete the Job and, first, its pods (Foreground); a Job already gone is stopped."""
    try:
        await asyncio.to_thread(
            batch.delete_namespaced_job,
            name,
            namespace,
            propagation_policy="Foreground",
            grace_period_seconds=max(1, round(grace_seconds)),
        )
    except Exception as exc:
        if not _is_not_found(exc):
            raise


def _api_refusal(exc: Exception, doing: str) -> TuneplexError:
    """A Kubernetes API error as the job's error: the API's own reason and message."""
    status = getattr(exc, "status", None)
    if status is None or status >= 500:
        return Unavailable(
            f"the Kubernetes API did not answer while {doing} ({exc.__class__.__name__})",
            code="runner_unavailable",
        )
    try:
        detail = json.loads(getattr(exc, "body", "") or "{}").get("message", "")
    except ValueError:
        detail = ""
    reason = getattr(exc, "reason", "") or ""
    return FailedPrecondition(
        f"the Kubernetes API refused {doing}: {status} {reason}: {detail}".rstrip(": "),
        code="runner_failed",
    )


def _waiting_reason(pod: Any) -> str:
    """Why a Pending pod is not running yet, as the scheduler or the kubelet put it."""
    for status in pod.status.container_statuses or []:
        waiting = status.state and status.state.waiting
        if waiting and waiting.reason:
            return f"{waiting.reason}: {waiting.message or ''}".rstrip(": ")
    for condition in pod.status.conditions or []:
        if condition.status == "False" and condition.reason:
            return f"{condition.reason}: {condition.message or ''}".rstrip(": ")
    return ""


class KubernetesWorker:
    """A created Job, followed through its pod's log. Needs a cluster."""

    def __init__(
        self, batch, core, namespace: str, name: str, log_path: Path, poll_seconds: float = 2.0
    ):
        self.batch, self.core, self.namespace, self.name = batch, core, namespace, name
        self.log_path = log_path
        self.poll_seconds = poll_seconds

    async def _read_job(self):
        return await _read_job(self.batch, self.namespace, self.name)

    async def _pods(self) -> list:
        pods = await asyncio.to_thread(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=f"{JOB_NAME_LABEL}={self.name}",
        )
        return list(pods.items)

    async def _started_pod(self) -> AsyncIterator[str | dict]:
        """Log events saying why the pod waits, then the pod's name once it has started; nothing
        more when the Job ends (deleted, or failed) before any pod ran."""
        said = ""
        while True:
            pods = await self._pods()
            for pod in pods:
                if pod.status.phase in ("Running", "Succeeded", "Failed"):
                    yield pod.metadata.name
                    return
            reason = next((r for r in map(_waiting_reason, pods) if r), "")
            if reason and reason != said:
                said = reason
                yield {"type": "log", "message": f"the Job's pod is waiting: {reason}"}
            job = await self._read_job()
            if job is None or job.metadata.deletion_timestamp or job.status.failed:
                return
            await asyncio.sleep(self.poll_seconds)

    async def events(self) -> AsyncIterator[dict]:
        pod = None
        async for found in self._started_pod():
            if isinstance(found, dict):
                yield found
            else:
                pod = found
        if pod is None:
            return
        try:
            stream = await asyncio.to_thread(
                self.core.read_namespaced_pod_log,
                pod,
                self.namespace,
                follow=True,
                _preload_content=False,
            )
        except Exception as exc:
            # 404: deleted since the list; 400: its container never started, so it has no log.
            if getattr(exc, "status", None) in (400, 404):
                return
            raise
        chunks = stream.stream()
        pending = b""
        with open(self.log_path, "a", encoding="utf-8") as log:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                # The API cuts the stream wherever it likes: only whole lines are parsed.
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    for event in self._line(raw, log):
                        yield event
            if pending:
                for event in self._line(pending, log):
                    yield event

    @staticmethod
    def _line(raw: bytes, log) -> list[dict]:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        event = parse_event_line(line)
        if event is not None:
            return [event]
        log.write(line + "\n")
        log.flush()
        return []

    async def wait(self) -> int:
        while True:
            job = await self._read_job()
            if job is None:
                return DELETED_EXIT
            if not job.metadata.deletion_timestamp:
                if job.status.succeeded:
                    return 0
                if job.status.failed:
                    return await self._exit_code()
            await asyncio.sleep(self.poll_seconds)

    async def _exit_code(self) -> int:
        for pod in await self._pods():
            for status in pod.status.container_statuses or []:
                if status.state and status.state.terminated:
                    return status.state.terminated.exit_code
        return 1

    async def stop(self, grace_seconds: float) -> None:
        await _delete_job(self.batch, self.namespace, self.name, grace_seconds)


class KubernetesRunner:
    def __init__(self, settings, memory_bytes_for, poll_seconds: float = 2.0):
        self.settings = settings
        self.memory_bytes_for = memory_bytes_for
        self.poll_seconds = poll_seconds

    async def start(
        self, job_id: str, job_dir: Path, num_gpus: int, zero_stage: int, attempt: int = 1
    ):
        s = self.settings
        manifest = job_manifest_for(
            s,
            job_id=job_id,
            attempt=attempt,
            worker_config=json.loads((job_dir / CONFIG_FILE).read_text()),
            num_gpus=num_gpus,
            zero_stage=zero_stage,
            memory_bytes=self.memory_bytes_for(job_id),
        )
        path = job_dir / f"k8s-job-a{attempt}.json"
        path.write_text(json.dumps(manifest, indent=2))
        try:
            from kubernetes import client, config
        except ImportError:
            raise FailedPrecondition(
                "runner kubernetes needs the `kubernetes` Python client in the trainer's image "
                "(pip install 'tuneplex[kubernetes]'); the job's Job manifest was written beside "
                "it for `kubectl apply`",
                code="runner_unavailable",
            ) from None
        await asyncio.to_thread(self._load_config, config)
        batch, core = client.BatchV1Api(), client.CoreV1Api()
        name = manifest["metadata"]["name"]
        try:
            await self._delete_earlier_attempts(batch, job_id)
            await asyncio.to_thread(batch.create_namespaced_job, s.k8s_namespace, manifest)
        except TuneplexError:
            raise
        except Exception as exc:
            raise _api_refusal(exc, f"creating Job {name}") from exc
        with open(job_dir / LOG_FILE, "a") as log:
            log.write(f"--- {job_id}: starting attempt {attempt} as Job {name}\n")
        return KubernetesWorker(
            batch, core, s.k8s_namespace, name, job_dir / LOG_FILE, self.poll_seconds
        )

    def checkpoints(self, job_id: str, job_dir: Path) -> list[CheckpointInfo] | None:
        """Read on the claim where the trainer mounts it, not in the service's own job folder
        (the pods never write there)."""
        s = self.settings
        if not s.k8s_checkpoint_claim:
            return []  # an emptyDir: gone with the pod, the next attempt starts over
        if s.k8s_checkpoint_mount is None:
            return None
        on_claim = Path(pod_job_dir(job_id)).relative_to(WORK_MOUNT) / CHECKPOINTS_DIR
        return complete_checkpoints(s.k8s_checkpoint_mount / on_claim)

    def _load_config(self, config) -> None:
        if self.settings.k8s_kubeconfig:
            config.load_kube_config(config_file=str(self.settings.k8s_kubeconfig))
            return
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()

    async def _delete_earlier_attempts(self, batch, job_id: str) -> None:
        """Delete and wait out the Jobs this job's earlier attempts left behind."""
        namespace = self.settings.k8s_namespace
        jobs = await asyncio.to_thread(
            batch.list_namespaced_job, namespace, label_selector=f"{JOB_ID_LABEL}={job_id}"
        )
        for job in jobs.items:
            name = job.metadata.name
            await _delete_job(batch, namespace, name, self.settings.cancel_grace_seconds)
            deadline = asyncio.get_running_loop().time() + EARLIER_ATTEMPT_DELETE_SECONDS
            while await _read_job(batch, namespace, name) is not None:
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(
                        f"Job {name} of an earlier attempt is still being deleted after "
                        f"{EARLIER_ATTEMPT_DELETE_SECONDS} s; the new attempt would share its "
                        "job folder",
                        code="runner_unavailable",
                    )
                await asyncio.sleep(self.poll_seconds)
