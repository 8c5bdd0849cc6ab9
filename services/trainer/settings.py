"""Settings of the trainer service, read from ``TUNEPLEX_TRAINER_...`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

DEFAULT_TRAINER_PORT = 50052


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEPLEX_TRAINER_", extra="ignore")

    port: int = Field(DEFAULT_TRAINER_PORT, description="Port to bind.")
    metrics_port: int = Field(
        9091, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 = off."
    )
    registry_target: str = Field("127.0.0.1:50051", description="host:port of the registry.")
    registry_api_key: SecretStr | None = Field(None, description="Bearer key for the registry.")
    gateway_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the gateway that eval jobs send their items through.",
    )
    gateway_api_key: SecretStr | None = Field(None, description="Bearer key for the gateway.")
    max_concurrent_jobs: int = Field(1, ge=1, description="Jobs that run at once; more wait.")
    max_attempts: int = Field(
        3, ge=1, description="Worker starts per job (crash resumes count) before it fails."
    )
    runner: Literal["local", "kubernetes"] = Field("local", description="Where jobs run.")
    k8s_namespace: str = Field("tuneplex", description="Namespace of trainer Jobs.")
    k8s_image: str = Field("tuneplex:latest", description="Image of trainer Job pods.")
    k8s_gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource for GPUs.")
    k8s_service_account: str = Field(
        "tuneplex-trainer-job", description="Job pods' service account."
    )
    k8s_node_selector: dict[str, str] = Field(
        default_factory=dict, description="nodeSelector of Job pods, e.g. GPU nodes."
    )
    k8s_tolerations: list[dict] = Field(
        default_factory=list,
        description="Tolerations of Job pods (GPU jobs default to tolerating the GPU taint).",
    )
    k8s_checkpoint_claim: str | None = Field(
        None,
        description="ReadWriteMany claim Job pods keep job folders and checkpoints on, so an "
        "attempt on another node resumes; unset: an emptyDir, and a lost pod restarts at step 0.",
    )
    k8s_checkpoint_mount: Path | None = Field(
        None,
        description="Where the trainer itself mounts k8s_checkpoint_claim (read-only is "
        "enough), to read which checkpoint a retried attempt resumes from; unset with a claim: "
        "the newest step the workers reported.",
    )
    k8s_cpus: int = Field(
        4,
        ge=1,
        le=1024,
        description="CPU limit of a Job pod (its training threads follow it); it requests 1.",
    )
    k8s_kubeconfig: Path | None = Field(
        None,
        description="kubeconfig of the cluster Jobs run on, for a trainer outside it; unset: "
        "the pod's service account, else the default kubeconfig.",
    )
    k8s_gpus: int = Field(
        0,
        ge=0,
        description="GPUs per node Jobs may ask for (the service cannot see the nodes); "
        "0: CPU nodes.",
    )
    device_memory_bytes: int | None = Field(
        None,
        description="Memory of the training device, overriding the detected CUDA/host memory "
        "(for the estimate when jobs run elsewhere, e.g. on Kubernetes GPUs).",
    )
    cancel_grace_seconds: float = Field(
        3.0, gt=0, description="Wait after SIGTERM before a cancelled worker gets SIGKILL."
    )

    @property
    def work_dir(self) -> Path:
        return self.home / "trainer"

    def registry_api_key_value(self) -> str | None:
        return self.registry_api_key.get_secret_value() if self.registry_api_key else None

    def gateway_api_key_value(self) -> str | None:
        return self.gateway_api_key.get_secret_value() if self.gateway_api_key else None
