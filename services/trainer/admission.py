"""What CreateJob checks before a job is queued: the spec (typed validation), that its base model
and datasets exist in the registry (pinned to the versions found, so retries train on the same
bytes), and that its estimated peak memory fits the training device."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import FailedPrecondition
from services.common.stubs import trainer_pb2
from services.trainer.artifacts import ArtifactCache, model_config, version_ref
from services.trainer.device import DeviceInfo
from services.trainer.memory import MemoryEstimate, ModelShape, estimate_memory, require_fit
from services.trainer.spec import TrainingConfig, training_config_from_proto


@dataclass(frozen=True)
class Admitted:
    config: TrainingConfig
    estimate: MemoryEstimate


def training_spec_of(spec: trainer_pb2.JobSpec, runner: str) -> trainer_pb2.TrainingSpec:
    if spec.WhichOneof("kind") == "export":
        raise FailedPrecondition(
            "export jobs (merging an adapter into a full model) are not implemented in this "
            "trainer yet; serve the adapter through the gateway instead",
            param="spec.export",
            code="not_implemented",
        )
    if spec.WhichOneof("kind") != "training":
        raise FailedPrecondition(
            "spec.training is required", param="spec.training", code="invalid_spec"
        )
    wanted = {
        trainer_pb2.RUNNER_KIND_LOCAL: "local",
        trainer_pb2.RUNNER_KIND_KUBERNETES: "kubernetes",
    }.get(spec.runner, runner)
    if wanted != runner:
        raise FailedPrecondition(
            f"this trainer runs jobs with the {runner} runner; leave spec.runner unset or use "
            f"a trainer configured with TUNEPLEX_TRAINER_RUNNER={wanted}",
            param="spec.runner",
            code="invalid_spec",
        )
    return spec.training


class Admission:
    def __init__(self, cache: ArtifactCache, device: DeviceInfo, runner: str):
        self.cache = cache
        self.device = device
        self.runner = runner

    def admit(self, spec: trainer_pb2.JobSpec, *, enforce_fit: bool = True) -> Admitted:
        """Validate, pin registry versions and estimate memory (blocking: registry calls)."""
        config = training_config_from_proto(training_spec_of(spec, self.runner), self.device)
        model, model_dir = self.cache.fetch("model", config.base_model, "training.base_model")
        dataset = self.cache.resolve("dataset", config.dataset, "training.dataset")
        pinned = {"base_model": version_ref(model), "dataset": version_ref(dataset)}
        if config.validation_dataset:
            validation = self.cache.resolve(
                "dataset", config.validation_dataset, "training.validation_dataset"
            )
            pinned["validation_dataset"] = version_ref(validation)
        shape = ModelShape.from_config(model_config(model_dir, pinned["base_model"]))
        check = require_fit if enforce_fit else estimate_memory
        estimate = check(config, shape, self.device)
        return Admitted(config.model_copy(update=pinned), estimate)
