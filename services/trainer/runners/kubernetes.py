"""Kubernetes runner: each job attempt becomes a batch/v1 Job running the same worker module.

``backoffLimit: 0`` because retries belong to the service (it resumes from the last checkpoint
and counts attempts); a new attempt is a new Job. The pod is locked down to the "restricted"
Pod Security profile. The worker's config travels in an env var (the service's own volume is
ReadWriteOnce); checkpoints go to ``checkpoint_claim`` when one is configured (a ReadWriteMany
claim lets a new attempt resume), else to an emptyDir that dies with the pod.

Building the manifest is pure and unit tested. Creating and following a Job needs the optional
``kubernetes`` client and a cluster; without the client ``start`` refuses with the manifest
written beside the job so it can be applied by hand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from services.common.errors import FailedPrecondition
from services.trainer.runners.deepspeed import zero_config
from services.trainer.worker.protocol import (
    ATTEMPT_ENV,
    CONFIG_ENV,
    CONFIG_FILE,
    DEEPSPEED_ENV,
    GATEWAY_KEY_ENV,
    REGISTRY_KEY_ENV,
    parse_event_line,
    worker_args,
)

WORK_MOUNT = "/var/lib/tuneplex"


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
    checkpoint_claim: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict] | None = None,
) -> dict:
    """The batch/v1 Job of one attempt of ``job_id``."""
    job_dir = f"{WORK_MOUNT}/jobs/{job_id}"
    worker = worker_args(job_dir)
    if num_gpus > 1:
        command = [
            "python",
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={num_gpus}",
            *worker,
        ]
    else:
        command = ["python", *worker]
    labels = {
        "app.kubernetes.io/name": "tuneplex",
        "app.kubernetes.io/component": "trainer-job",
        "tuneplex.dev/job-id": job_id,
    }
    memory_mib = max(2048, -(-memory_bytes // (1024 * 1024)))
    resources: dict = {
        "requests": {"cpu": "1", "memory": f"{memory_mib}Mi"},
        "limits": {"memory": f"{memory_mib}Mi"},
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
    pod_spec: dict = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "worker",
                "image": image,
                "command": command,
                "env": env,
                "resources": resources,
                "securityContext": {
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
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


class KubernetesWorker:
    """A created Job, followed through its pod's log. Needs a cluster."""

    def __init__(self, batch, core, namespace: str, name: str):
        self.batch, self.core, self.namespace, self.name = batch, core, namespace, name

    async def _pod(self) -> str:
        while True:
            pods = await asyncio.to_thread(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=f"job-name={self.name}",
            )
            for pod in pods.items:
                if pod.status.phase in ("Running", "Succeeded", "Failed"):
                    return pod.metadata.name
            await asyncio.sleep(2)

    async def events(self) -> AsyncIterator[dict]:
        pod = await self._pod()
        stream = await asyncio.to_thread(
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            follow=True,
            _preload_content=False,
        )
        lines = stream.stream()
        while True:
            chunk = await asyncio.to_thread(next, lines, None)
            if chunk is None:
                return
            for line in chunk.decode("utf-8", "replace").splitlines():
                if (event := parse_event_line(line)) is not None:
                    yield event

    async def wait(self) -> int:
        while True:
            job = await asyncio.to_thread(self.batch.read_namespaced_job, self.name, self.namespace)
            if job.status.succeeded:
                return 0
            if job.status.failed:
                return await self._exit_code()
            await asyncio.sleep(3)

    async def _exit_code(self) -> int:
        pods = await asyncio.to_thread(
            self.core.list_namespaced_pod, self.namespace, label_selector=f"job-name={self.name}"
        )
        for pod in pods.items:
            for status in pod.status.container_statuses or []:
                if status.state.terminated:
                    return status.state.terminated.exit_code
        return 1

    async def stop(self, grace_seconds: float) -> None:
        await asyncio.to_thread(
            self.batch.delete_namespaced_job,
            self.name,
            self.namespace,
            propagation_policy="Foreground",
            grace_period_seconds=int(grace_seconds),
        )


class KubernetesRunner:
    def __init__(self, settings, memory_bytes_for):
        self.settings = settings
        self.memory_bytes_for = memory_bytes_for

    async def start(
        self, job_id: str, job_dir: Path, num_gpus: int, zero_stage: int, attempt: int = 1
    ):
        s = self.settings
        manifest = build_job_manifest(
            job_id=job_id,
            attempt=attempt,
            worker_config=json.loads((job_dir / CONFIG_FILE).read_text()),
            namespace=s.k8s_namespace,
            image=s.k8s_image,
            service_account=s.k8s_service_account,
            num_gpus=num_gpus,
            zero_stage=zero_stage,
            gpu_resource=s.k8s_gpu_resource,
            memory_bytes=self.memory_bytes_for(job_id),
            checkpoint_claim=s.k8s_checkpoint_claim,
            node_selector=s.k8s_node_selector,
            tolerations=s.k8s_tolerations,
        )
        path = job_dir / f"k8s-job-a{attempt}.json"
        path.write_text(json.dumps(manifest, indent=2))
        try:
            from kubernetes import client, config
        except ImportError:
            raise FailedPrecondition(
                f"runner kubernetes needs the `kubernetes` Python client and a cluster; the Job "
                f"manifest is at {path}: `kubectl apply -f {path}`, or install the client",
                code="runner_unavailable",
            ) from None
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        batch, core = client.BatchV1Api(), client.CoreV1Api()
        await asyncio.to_thread(batch.create_namespaced_job, s.k8s_namespace, manifest)
        return KubernetesWorker(batch, core, s.k8s_namespace, manifest["metadata"]["name"])
