"""What CreateJob checks before a job is queued: the spec (typed validation), that what it names
exists in the registry (pinned to the versions found, so retries use the same bytes), and that
its estimated peak memory fits in what is free for it on the device it will run on: the
device's memory less the estimates of the jobs that may run beside it there (the local runner
runs ``max_concurrent_jobs`` at once on this machine; a Kubernetes Job gets a pod of its own).

Training: base model and datasets (and the eval set and databases of its end-of-run
evaluation), memory on the training device (the GPUs, or the host's memory for num_gpus 0).
Export: the adapter and the
exact base model version it was trained on, a free output name, memory of the merge on the host.
Evaluation: the adapter or model (adapters first, as the gateway resolves a `model`) and the
base it runs on, the eval set (a dataset of format EVAL), every SQLite database a grader names,
memory of generating the answers in the worker when it may have to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
from google.protobuf.json_format import MessageToDict

from services.common import peft_types
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    shown,
)
from services.common.refs import NAME_RE, parse_ref
from services.common.stubs import registry_pb2, trainer_pb2
from services.common.training_spec import INT32_MAX, MAX_NAME_LENGTH, checkpoint_adapter_name
from services.evaluation.graders import referenced_databases
from services.trainer.artifacts import RegistryPullCache, version_ref
from services.trainer.device import DeviceInfo, host_cpu
from services.trainer.eval_spec import EvalConfig, eval_config_from_proto
from services.trainer.export_spec import ExportConfig, export_config_from_proto, merge_load_plan
from services.trainer.memory import (
    ActiveJob,
    Held,
    MemoryEstimate,
    ModelShape,
    checkpoint_if_needed,
    estimate_eval_memory,
    estimate_export_memory,
    estimate_memory,
    held_beside,
    require_eval_fit,
    require_export_fit,
    require_fit,
)
from services.trainer.spec import TrainingConfig, TrainingEvalConfig, training_config_from_proto

JobConfig = TrainingConfig | ExportConfig | EvalConfig


@dataclass(frozen=True)
class Admitted:
    # What runs: the normalised request with its registry references pinned.
    config: JobConfig
    estimate: MemoryEstimate
    # The request itself, normalised (defaults applied, nothing pinned): what a reused
    # idempotency key is compared by.
    request: JobConfig


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
            "spec.training, spec.export or spec.evaluation is required",
            param="spec.training",
            code="invalid_spec",
        )
    check_runner(spec, runner)
    return spec.training


def format_name(found: registry_pb2.ArtifactVersion) -> str:
    name = registry_pb2.DatasetFormat.Name(found.dataset.format)
    return name.removeprefix("DATASET_FORMAT_").lower().replace("_", "/")


def require_dataset_format(
    config: TrainingConfig, found: registry_pb2.ArtifactVersion, param: str
) -> None:
    """DPO trains on preference pairs and nothing else does: a chat set given to a DPO job, or
    a preference set to any other method, would fail in the worker after minutes of setup."""
    preference = found.dataset.format == registry_pb2.DATASET_FORMAT_PREFERENCE
    if config.is_preference and not preference:
        raise FailedPrecondition(
            f"method {config.method} trains on preference pairs but dataset {version_ref(found)} "
            f"is a {format_name(found)} dataset; upload a JSONL file whose lines are "
            '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": '
            "[...]} (`tuneplex datasets upload`)",
            param=param,
            code="wrong_dataset_format",
        )
    if preference and not config.is_preference:
        raise FailedPrecondition(
            f"dataset {version_ref(found)} is a preference dataset, which only method dpo "
            f"trains on; use method dpo, or a chat dataset for method {config.method}",
            param=param,
            code="wrong_dataset_format",
        )


def longest_step(config: TrainingConfig, num_examples: int) -> int:
    """An upper bound of the last step ``config`` trains to on ``num_examples`` examples (the
    Trainer's count; the recipes only ever drop examples). Unknown size: the int32 bound."""
    if config.max_steps:
        return config.max_steps
    if num_examples <= 0:
        return INT32_MAX
    per_step = config.batch_size * max(1, config.num_gpus)
    batches = math.ceil(num_examples / per_step)
    return math.ceil(config.epochs * math.ceil(batches / config.gradient_accumulation_steps))


def require_checkpoint_names(config: TrainingConfig, num_examples: int) -> None:
    """Every checkpoint name ``<output_name>-step-<N>`` the job may publish is a valid name,
    so publishing cannot fail at the end of a finished training run."""
    longest = checkpoint_adapter_name(config.output_name, longest_step(config, num_examples))
    if not NAME_RE.fullmatch(longest):
        room = MAX_NAME_LENGTH - (len(longest) - len(config.output_name))
        raise InvalidArgument(
            f"with publish_checkpoints a checkpoint is published as {longest!r}, longer than "
            f"the {MAX_NAME_LENGTH} characters a name may have; shorten output_name to at most "
            f"{room} characters or drop publish_checkpoints",
            param="training.output_name",
            code="invalid_spec",
        )


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
        # What a job on the CPU of a GPU machine (num_gpus 0, a merge) is checked against.
        self.host_memory_bytes = host_memory_bytes or psutil.virtual_memory().total

    def normalise(self, spec: trainer_pb2.JobSpec) -> JobConfig:
        """The request validated, with its defaults applied for this trainer's device (no
        registry calls): what two requests must share to be the same request."""
        if spec.WhichOneof("kind") == "export":
            check_runner(spec, self.runner)
            return export_config_from_proto(spec.export)
        if spec.WhichOneof("kind") == "evaluation":
            check_runner(spec, self.runner)
            return eval_config_from_proto(spec.evaluation)
        return training_config_from_proto(training_spec_of(spec, self.runner), self.device)

    def job_device(self, config: JobConfig) -> DeviceInfo:
        """The device whose memory ``config`` is checked against: the GPUs of a job that
        trains on them; the host's CPU for num_gpus 0, a merge, and an eval that sends its
        items to the gateway; an eval that may generate locally uses the GPU where there is
        one, as its worker does."""
        host = host_cpu(self.device, self.host_memory_bytes)
        if isinstance(config, TrainingConfig):
            return self.device if config.num_gpus else host
        if isinstance(config, EvalConfig) and config.backend != "gateway":
            return self.device
        return host

    def _held(self, device: str, active: Sequence[ActiveJob], slots: int) -> Held:
        # A Kubernetes Job runs in a pod of its own, sized by its estimate: the cluster, not
        # this trainer, places it beside others.
        return held_beside(active, device, slots if self.runner == "local" else 1)

    def admit(
        self,
        spec: trainer_pb2.JobSpec,
        *,
        enforce_fit: bool = True,
        active: Sequence[ActiveJob] = (),
        slots: int = 1,
    ) -> Admitted:
        """Validate, pin registry versions and estimate memory (blocking: registry calls).
        ``active``: the jobs admitted and not finished; ``slots``: how many run at once."""
        request = self.normalise(spec)
        device = self.job_device(request)
        held = self._held(device.name, active, slots)
        if isinstance(request, ExportConfig):
            return self.admit_export(request, enforce_fit, held)
        if isinstance(request, EvalConfig):
            return self.admit_evaluation(request, enforce_fit, held)
        config = request
        model = self.cache.resolve("model", config.base_model, "training.base_model")
        dataset = self.cache.resolve("dataset", config.dataset, "training.dataset")
        require_dataset_format(config, dataset, "training.dataset")
        pinned: dict[str, object] = {
            "base_model": version_ref(model),
            "dataset": version_ref(dataset),
        }
        if config.validation_dataset:
            validation = self.cache.resolve(
                "dataset", config.validation_dataset, "training.validation_dataset"
            )
            require_dataset_format(config, validation, "training.validation_dataset")
            pinned["validation_dataset"] = version_ref(validation)
        if config.publish_checkpoints:
            require_checkpoint_names(config, dataset.dataset.num_examples)
        if config.evaluation is not None:
            pinned["evaluation"] = self.training_evaluation(config.evaluation)
        shape = ModelShape.from_config(self.cache.model_config(model))
        config = checkpoint_if_needed(config, shape, device, held)
        estimate = (
            require_fit(config, shape, device, held)
            if enforce_fit
            else estimate_memory(config, shape, device, held=held)
        )
        return Admitted(config.model_copy(update=pinned), estimate, request)

    def training_evaluation(self, evaluation: TrainingEvalConfig) -> TrainingEvalConfig:
        """A training job's end-of-run evaluation with its eval set and databases pinned, as an
        eval job's are."""
        eval_set = self.eval_set(evaluation.eval_set, "training.evaluation.eval_set")
        databases = self.databases(
            referenced_databases(list(evaluation.graders)), "training.evaluation.graders"
        )
        return evaluation.model_copy(
            update={"eval_set": version_ref(eval_set), "databases": databases}
        )

    def admit_export(self, request: ExportConfig, enforce_fit: bool, held: Held) -> Admitted:
        config = request
        adapter = self.cache.resolve("adapter", config.adapter, "export.adapter")
        exact = version_ref(adapter)
        info = adapter.adapter
        if info.peft_type and info.peft_type.upper() not in peft_types.ACCEPTED:
            raise FailedPrecondition(
                f"adapter {exact} is a {info.peft_type} adapter; LoRA, DoRA, IA3, LoHa and LoKr "
                "adapters merge into their base model",
                param="export.adapter",
                code="unsupported_adapter",
            )
        base_ref = info.base_model or adapter.lineage.base_model
        base = self._exact_base_model(exact, base_ref)
        self._require_free_name(config.output_name)
        hyperparameters = MessageToDict(adapter.lineage.hyperparameters) or None
        plan = merge_load_plan(hyperparameters)
        shape = ModelShape.from_config(self.cache.model_config(base))
        estimate = estimate_export_memory(
            shape, plan.dtype, config.precision, self.host_memory_bytes, held
        )
        if enforce_fit:
            require_export_fit(estimate)
        pinned = {"adapter": exact, "base_model": version_ref(base)}
        return Admitted(config.model_copy(update=pinned), estimate, request)

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

    def admit_evaluation(self, request: EvalConfig, enforce_fit: bool, held: Held) -> Admitted:
        config = request
        model_kind, target, base = self.eval_target(config.model, "evaluation.model")
        eval_set = self.eval_set(config.eval_set, "evaluation.eval_set")
        databases = self.databases(referenced_databases(config.graders), "evaluation.graders")
        shape = None
        if config.backend != "gateway":  # auto may generate in the worker: size that
            shape = ModelShape.from_config(self.cache.model_config(base))
        estimate = estimate_eval_memory(
            shape, config.backend, config.sampling.max_tokens, self.job_device(config), held
        )
        if enforce_fit and config.backend == "local":
            require_eval_fit(estimate)
        pinned = {
            "model": version_ref(target),
            "model_kind": model_kind,
            "base_model": version_ref(base),
            "eval_set": version_ref(eval_set),
            "databases": databases,
            "output_name": config.output_name or eval_set.name,
            "num_items": eval_set.dataset.num_examples,
        }
        return Admitted(config.model_copy(update=pinned), estimate, request)

    def eval_target(self, ref: str, param: str) -> tuple[str, object, object]:
        """(kind, version, base model version) of what an eval scores: an adapter of that name
        first (as the gateway resolves a request's `model`), else a model, which is its own
        base."""
        parse_ref(ref, param=param)
        client = self.cache.client
        try:
            adapter = client.resolve("adapter", ref)
        except NotFound:
            pass
        else:
            exact = version_ref(adapter)
            base_ref = adapter.adapter.base_model or adapter.lineage.base_model
            try:
                if not base_ref:
                    raise NotFound("no base model")
                base = client.resolve("model", base_ref)
            except NotFound:
                raise FailedPrecondition(
                    f"adapter {exact} was trained on base model {base_ref or '(unknown)'}, "
                    "which is not in the registry; push that model again (`tuneplex models "
                    "push`), then evaluate",
                    param=param,
                    code="base_model_not_found",
                ) from None
            return "adapter", adapter, base
        try:
            model = client.resolve("model", ref)
        except NotFound:
            raise NotFound(
                f"{shown(ref)} is neither an adapter nor a model in the registry; see "
                "`tuneplex adapters list` and `tuneplex models list`",
                param=param,
                code="model_not_found",
            ) from None
        return "model", model, model

    def eval_set(self, ref: str, param: str) -> registry_pb2.ArtifactVersion:
        """The pinned eval set: a dataset whose lines are eval items."""
        found = self.cache.resolve("dataset", ref, param)
        if found.dataset.format != registry_pb2.DATASET_FORMAT_EVAL:
            fmt = registry_pb2.DatasetFormat.Name(found.dataset.format)
            raise FailedPrecondition(
                f"dataset {version_ref(found)} is a {fmt.removeprefix('DATASET_FORMAT_').lower()} "
                'dataset, not an eval set; upload a JSONL file whose lines are {"input": ...} '
                "items (`tuneplex datasets upload`)",
                param=param,
                code="not_an_eval_set",
            )
        return found

    def databases(self, refs: list[str], param: str) -> dict[str, str]:
        """Each SQLite database a grader names (as written) -> its pinned version."""
        pinned: dict[str, str] = {}
        for ref in refs:
            found = self.cache.resolve("dataset", ref, param)
            if found.dataset.format != registry_pb2.DATASET_FORMAT_SQLITE:
                raise FailedPrecondition(
                    f"sql_execution database {shown(ref)} is dataset {version_ref(found)}, "
                    "which is not a SQLite database; upload the .db file with `tuneplex "
                    "datasets upload`",
                    param=param,
                    code="not_a_database",
                )
            pinned[ref] = version_ref(found)
        return pinned
