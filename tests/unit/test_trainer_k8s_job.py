"""The Kubernetes Job a trainer job becomes: valid against the API schemas (unknown fields
rejected), restricted Pod Security, no retries of its own, GPUs asked for as configured, job
folders on the checkpoint claim when there is one."""

from __future__ import annotations

import json

import pytest

from services.common.k8s_schema import K8S_VERSIONS, pod_security_errors, validate_manifests
from services.trainer.runners.deepspeed import zero_config
from services.trainer.runners.kubernetes import WORK_MOUNT, build_job_manifest
from services.trainer.worker.protocol import CONFIG_ENV, DEEPSPEED_ENV

WORKER = {"job_id": "job-abc", "registry_target": "tuneplex-registry:50051"}


def manifest(**kw) -> dict:
    args = dict(
        job_id="job-abc",
        attempt=2,
        worker_config=WORKER,
        namespace="tuneplex",
        image="ghcr.io/tuneplex/trainer:1",
        service_account="tuneplex-trainer-job",
        num_gpus=0,
        zero_stage=0,
        gpu_resource="nvidia.com/gpu",
        memory_bytes=3 * 2**30,
        cpus=4,
    )
    args.update(kw)
    return build_job_manifest(**args)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_manifest_is_valid_strictly(version, gpus):
    job = manifest(num_gpus=gpus, zero_stage=3 if gpus > 1 else 0, checkpoint_claim="ckpt")
    assert validate_manifests([job], version) == []
    assert pod_security_errors([job]) == []


def test_the_service_does_the_retries_and_the_pod_is_restricted():
    job = manifest()
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == "tuneplex-job-abc-a2"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert container["command"][:3] == ["python", "-m", "services.trainer.worker"]
    env = {e["name"]: e for e in container["env"]}
    assert json.loads(env[CONFIG_ENV]["value"]) == WORKER
    key = env["TUNEPLEX_TRAINER_REGISTRY_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["name"] == "tuneplex-api-key", "the key is referenced, never rendered"
    assert container["resources"]["limits"]["memory"] == "3072Mi"
    # Without a CPU limit the pod fails our Pod Security rules and its threads cannot size.
    assert container["resources"]["limits"]["cpu"] == "4"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert {"name": "work", "emptyDir": {}} in pod["volumes"]
    assert pod_security_errors([job]) == []


def test_the_checkpoint_claim_holds_the_job_folder_the_worker_is_given():
    job = manifest(checkpoint_claim="tuneplex-checkpoints")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = volumes[mounts[WORK_MOUNT]]["persistentVolumeClaim"]
    assert claim == {"claimName": "tuneplex-checkpoints"}
    job_dir = container["command"][container["command"].index("--job-dir") + 1]
    assert job_dir.startswith(WORK_MOUNT + "/"), "checkpoints must land on the claim"
    # A claim full of checkpoints is not chowned file by file at every pod start.
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_multi_gpu_jobs_launch_torchrun_with_a_zero_config():
    job = manifest(num_gpus=4, zero_stage=3, checkpoint_claim="tuneplex-checkpoints")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert "--nproc_per_node=4" in container["command"]
    assert "torch.distributed.run" in container["command"]
    assert "--shutdown-timeout=600" in container["command"]  # the pod's own grace
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env[DEEPSPEED_ENV])["zero_optimization"]["stage"] == 3
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    claim = {"name": "work", "persistentVolumeClaim": {"claimName": "tuneplex-checkpoints"}}
    assert claim in pod["volumes"]


def test_zero_configs_leave_batch_and_precision_to_the_spec():
    z2, z3 = zero_config(2), zero_config(3)
    assert z2["zero_optimization"]["stage"] == 2 and z3["zero_optimization"]["stage"] == 3
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert z2["train_micro_batch_size_per_gpu"] == "auto" and z2["bf16"] == {"enabled": "auto"}
    with pytest.raises(ValueError):
        zero_config(1)


def test_gpu_overlay_node_selector_and_tolerations_are_used():
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    job = manifest(
        num_gpus=1, node_selector={"nvidia.com/gpu.present": "true"}, tolerations=tolerations
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == tolerations
    assert validate_manifests([job]) == []
