"""What CreateJob checks before a job is queued: the spec (typed validation), that what it names
exists in the registry (pinned to the versions found, so retries use the same bytes), and that
its estimated peak memory fits.

Training: base model and datasets, memory on the training device. Export: the adapter and the
exact base model version it was trained on, a free output name, memory of the merge on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
from google.protobuf.json_format import MessageToDict

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.stubs import trainer_pb2
from services.trainer.artifacts import RegistryPullCache, model_config, version_ref
from services.trainer.device import DeviceInfo
from services.trainer.export_spec import ExportConfig, export_config_from_proto, merge_load_plan
from services.trainer.memory import (
    MemoryEstimate,
    ModelShape,
    estimate_export_memory,
    estimate_memory,
    require_export_fit,
    require_fit,
)
from services.trainer.spec import TrainingConfig, training_config_from_proto


@dataclass(frozen=True)
class Admitted:
    config: TrainingConfig | ExportConfig
    estimate: MemoryEstimate


def check_runner(spec: trainer_pb2.JobSpec, runner: str) -> None:
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


def training_spec_of(spec: trainer_pb2.JobSpec, runner: str) -> trainer_pb2.TrainingSpec:
    if spec.WhichOneof("kind") != "training":
        raise InvalidArgument(
            "spec.training or spec.export is required", param="spec.training", code="invalid_spec"
        )
    check_runner(spec, runner)
    return spec.training


class Admission:
    def __init__(
        self,
        cache: RegistryPullCache,
        device: DeviceInfo,
        runner: str,
        host_memory_bytes: int | None = None,
    ):
        self.cache = cache
        self.device = device
        self.runner = runner
        # Exports merge on the CPU: their estimate is checked against host memory.
        self.host_memory_bytes = host_memory_bytes or psutil.virtual_memory().total

    def admit(self, spec: trainer_pb2.JobSpec, *, enforce_fit: bool = True) -> Admitted:
        """Validate, pin registry versions and estimate memory (blocking: registry calls)."""
        if spec.WhichOneof("kind") == "export":
            check_runner(spec, self.runner)
            return self.admit_export(spec.export, enforce_fit=enforce_fit)
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

    def admit_export(self, spec: trainer_pb2.ExportSpec, *, enforce_fit: bool) -> Admitted:
        config = export_config_from_proto(spec)
        adapter = self.cache.resolve("adapter", config.adapter, "export.adapter")
        exact = version_ref(adapter)
        info = adapter.adapter
        if info.peft_type and info.peft_type.upper() != "LORA":
            raise FailedPrecondition(
                f"adapter {exact} is a {info.peft_type} adapter; only LoRA and DoRA adapters "
                "merge into their base model",
                param="export.adapter",
                code="unsupported_adapter",
            )
        base_ref = info.base_model or adapter.lineage.base_model
        base = self._exact_base_model(exact, base_ref)
        self._require_free_name(config.output_name)
        hyperparameters = MessageToDict(adapter.lineage.hyperparameters) or None
        plan = merge_load_plan(hyperparameters)
        _, model_dir = self.cache.fetch("model", version_ref(base), "export.adapter")
        shape = ModelShape.from_config(model_config(model_dir, version_ref(base)))
        estimate = estimate_export_memory(
            shape, plan.dtype, config.precision, self.host_memory_bytes
        )
        if enforce_fit:
            require_export_fit(estimate)
        pinned = {"adapter": exact, "base_model": version_ref(base)}
        return Admitted(config.model_copy(update=pinned), estimate)

    def _exact_base_model(self, adapter_ref: str, base_ref: str):
        """The very model version the adapter was trained on: a merge into any other weights
        would publish a model nobody trained."""
        if not base_ref:
            raise FailedPrecondition(
                f"adapter {adapter_ref} does not name its base model; push it again with "
                "`tuneplex adapters push --base-model`",
                param="export.adapter",
                code="base_model_not_found",
            )
        try:
            return self.cache.client.resolve("model", base_ref)
        except NotFound:
            raise FailedPrecondition(
                f"adapter {adapter_ref} was trained on base model {base_ref}, which is no longer "
                "in the registry, and a merge needs the exact weights it was trained on: push "
                "that model again (`tuneplex models push`), push the adapter against it "
                "(`tuneplex adapters push --base-model`), then export",
                param="export.adapter",
                code="base_model_not_found",
            ) from None

    def _require_free_name(self, name: str) -> None:
        # Adapters count too: the gateway resolves a request's `model` among both, and a
        # merged model named like an adapter would shadow it.
        for kind in ("model", "adapter"):
            try:
                self.cache.client.get(kind, name)
            except NotFound:
                continue
            raise AlreadyExists(
                f"{kind} name {name!r} is already taken in the registry; choose another "
                "--name (an export publishes a new model, never a new version of one)",
                param="export.output_name",
                code="name_taken",
            )
