"""`/v1/fine_tuning/jobs`: OpenAI fine-tuning jobs as trainer jobs.

CreateJob gets the spec built from the OpenAI request (hyper-parameters resolved by
`hyperparameters.resolve`, any other tuneplex setting from `tuneplex`, i.e. the SDK's
`extra_body`) and the labels that make the job readable back as an OpenAI job with no table
of the gateway's own (`names`). Every read checks the `tuneplex.owner` label: another owner's
job is a 404 exactly like an unknown one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    shown,
)
from services.common.stubs import registry_pb2, trainer_pb2
from services.common.training_spec import TrainingConfig
from services.common.training_spec_proto import config_from_values, spec_from_values
from services.gateway.fine_tuning import events as job_events
from services.gateway.fine_tuning import hyperparameters, names
from services.gateway.fine_tuning.files import FileStore
from services.gateway.fine_tuning.paging import after_cursor, page_fields
from services.gateway.fine_tuning.protocol import (
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
    FineTuningJob,
    JobCheckpoint,
    JobCheckpointList,
    JobCreateRequest,
    JobError,
    JobEventList,
    JobList,
)
from services.gateway.fine_tuning.status import FINAL, status_of
from services.gateway.fine_tuning.upstream import TrainerAccess, registry_outage

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Methods whose output vLLM loads as a runtime LoRA: `fine_tuned_model` is servable at once.
SERVABLE_METHODS = ("lora", "qlora")
# Set by the gateway from the OpenAI fields: not for `tuneplex` to override.
OWN_SETTINGS = {
    "base_model": "model",
    "dataset": "training_file",
    "validation_dataset": "validation_file",
    "output_name": "suffix",
    "publish_checkpoints": "",
    "epochs": "hyperparameters.n_epochs",
    "batch_size": "hyperparameters.batch_size",
    "learning_rate": "hyperparameters.learning_rate_multiplier",
    "seed": "seed",
    "dpo_beta": "method.dpo.hyperparameters.beta",
    "evaluation": "",
}
FORMAT_NAMES = {
    registry_pb2.DATASET_FORMAT_CHAT: "chat (messages)",
    registry_pb2.DATASET_FORMAT_PROMPT_COMPLETION: "prompt/completion",
    registry_pb2.DATASET_FORMAT_PREFERENCE: "preference (input, preferred_output, "
    "non_preferred_output)",
}
SUPERVISED_FORMATS = (
    registry_pb2.DATASET_FORMAT_CHAT,
    registry_pb2.DATASET_FORMAT_PROMPT_COMPLETION,
)


def job_not_found(job_id: str) -> NotFound:
    return NotFound(
        f"No such fine-tuning job: {shown(job_id)}",
        param="fine_tuning_job_id",
        code="fine_tuning_job_not_found",
    )


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """OpenAI's limits: at most 16 pairs, keys of at most 64 characters, values of 512."""
    metadata = dict(metadata or {})
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidArgument(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS}", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidArgument(
                f"metadata key {shown(key)} is over {MAX_METADATA_KEY} characters",
                param="metadata",
            )
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidArgument(
                f"metadata value of {shown(key)} is over {MAX_METADATA_VALUE} characters",
                param=f"metadata.{key}"[:100],
            )
        if not (key + value).isprintable():
            raise InvalidArgument(
                f"metadata {shown(key)} holds a non-printable character", param="metadata"
            )
    return metadata


def metadata_label(metadata: Mapping[str, str]) -> str:
    """The metadata as the job keeps it: compact JSON in one label ("" for none). OpenAI's
    limits (16 pairs of 64 + 512 characters) keep it within a label even when every character
    is escaped: 16 * (2 * 64 + 2 * 512 + 6) + 2 < labels.MAX_VALUE_CHARS."""
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False) if metadata else ""


def check_tuneplex(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `tuneplex` settings (TrainingConfig names), refusing those the OpenAI fields set."""
    settings = dict(settings or {})
    for name in settings:
        if name not in TrainingConfig.model_fields:
            raise InvalidArgument(
                f"unknown tuneplex setting {shown(name)}; use the names of "
                "docs/training-spec.md (lora_r, max_steps, save_steps, method, ...)",
                param=f"tuneplex.{name}"[:100],
                code="invalid_spec",
            )
        if name in OWN_SETTINGS:
            where = OWN_SETTINGS[name]
            hint = f"; set it as `{where}`" if where else "; the gateway sets it"
            raise InvalidArgument(
                f"tuneplex.{name} cannot be given here{hint}",
                param=f"tuneplex.{name}",
                code="invalid_spec",
            )
    return settings


@dataclass(frozen=True)
class _Method:
    type: str  # supervised | dpo
    given: dict[str, Any]  # the OpenAI hyperparameters object as sent


def method_of(request: JobCreateRequest) -> _Method:
    method = request.method
    legacy = (
        request.hyperparameters.model_dump(exclude_none=True) if request.hyperparameters else {}
    )
    if method is None:
        return _Method("supervised", legacy)
    if method.type == "reinforcement":
        raise InvalidArgument(
            "method type reinforcement is not supported here; use supervised or dpo",
            param="method.type",
            code="unsupported_method",
        )
    chosen = method.supervised if method.type == "supervised" else method.dpo
    given = (
        chosen.hyperparameters.model_dump(exclude_none=True)
        if chosen is not None and chosen.hyperparameters is not None
        else {}
    )
    if legacy and given:
        raise InvalidArgument(
            "give hyperparameters once: in method, or (legacy) at the top level",
            param="hyperparameters",
        )
    return _Method(method.type, given or legacy)


def trainer_method(method: _Method, settings: dict[str, Any]) -> str:
    asked = settings.pop("method", None)
    if method.type == "dpo":
        if asked not in (None, "dpo"):
            raise InvalidArgument(
                f"tuneplex.method {shown(asked)} contradicts method type dpo",
                param="tuneplex.method",
            )
        return "dpo"
    if asked == "dpo":
        raise InvalidArgument(
            "tuneplex.method dpo needs method type dpo (and a preference file)",
            param="tuneplex.method",
        )
    if asked not in (None, *SERVABLE_METHODS):
        raise InvalidArgument(
            f"tuneplex.method {shown(asked)}: the fine-tuned model of a job made here is "
            f"served by this gateway at once, which takes {' or '.join(SERVABLE_METHODS)} "
            "adapters; train other methods with the trainer's own API (`tuneplex jobs create`)",
            param="tuneplex.method",
            code="unsupported_method",
        )
    return asked or "lora"


def check_file(method: _Method, version: registry_pb2.ArtifactVersion, param: str) -> None:
    """A training or validation file must be a fine-tune file in the method's format."""
    purpose = version.labels.get(names.PURPOSE_LABEL)
    if purpose != "fine-tune":
        raise InvalidArgument(
            f"{version.name} has purpose {purpose}; a fine-tuning job needs a file uploaded "
            "with purpose fine-tune",
            param=param,
            code="invalid_file",
        )
    check_format(method, version.dataset, param)


def check_format(method: _Method, info: registry_pb2.DatasetInfo, param: str) -> None:
    ok = (
        (info.format == registry_pb2.DATASET_FORMAT_PREFERENCE)
        if method.type == "dpo"
        else info.format in SUPERVISED_FORMATS
    )
    if not ok:
        need = (
            FORMAT_NAMES[registry_pb2.DATASET_FORMAT_PREFERENCE]
            if method.type == "dpo"
            else "chat (messages) or prompt/completion"
        )
        have = FORMAT_NAMES.get(
            info.format,
            registry_pb2.DatasetFormat.Name(info.format).removeprefix("DATASET_FORMAT_").lower(),
        )
        raise InvalidArgument(
            f"a {method.type} job needs a {need} file; this file is {have}",
            param=param,
            code="invalid_file_format",
        )


def _json_label(job: trainer_pb2.Job, key: str) -> Any:
    try:
        return json.loads(job.labels.get(key) or "null")
    except ValueError:
        return None


def job_object(job: trainer_pb2.Job) -> FineTuningJob:
    labels = job.labels
    status = status_of(job.state)
    hp = _json_label(job, names.HYPERPARAMETERS_LABEL) or {}
    method_type = labels.get(names.METHOD_LABEL, "supervised")
    error = None
    if status == "failed":
        error = JobError(
            code=job.error.code or "failed",
            message=job.error.message or "failed",
            param=job.error.param or None,
        )
    eta = job.progress.eta_seconds
    return FineTuningJob(
        id=names.job_id(job.id),
        created_at=job.create_time.seconds,
        error=error,
        fine_tuned_model=labels.get(names.FINE_TUNED_MODEL_LABEL)
        if status == "succeeded"
        else None,
        finished_at=job.end_time.seconds if status in FINAL and job.end_time.seconds else None,
        hyperparameters={k: v for k, v in hp.items() if k != "beta"},
        model=labels.get(names.MODEL_LABEL, ""),
        organization_id=labels.get(names.OWNER_LABEL, ""),
        seed=int(labels.get(names.SEED_LABEL) or 0),
        status=status,
        trained_tokens=job.progress.trained_tokens or None,
        training_file=labels.get(names.TRAINING_FILE_LABEL, ""),
        validation_file=labels.get(names.VALIDATION_FILE_LABEL) or None,
        estimated_finish=int(time.time() + eta) if status == "running" and eta > 0 else None,
        metadata=_json_label(job, names.METADATA_LABEL) or None,
        method={"type": method_type, method_type: {"hyperparameters": hp}},
    )


def metadata_filter(query: Mapping[str, str]) -> dict[str, str] | None:
    """OpenAI's `metadata[k]=v` query parameters; `{}` for `metadata=null` (jobs with none)."""
    wanted = {
        k[len("metadata[") : -1]: v
        for k, v in query.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    if query.get("metadata") == "null":
        return {}
    return wanted or None


class FineTuningJobs:
    def __init__(self, trainer: TrainerAccess, files: FileStore, registry: Any):
        self._trainer = trainer
        self._files = files
        self._registry = registry

    async def create(self, owner: str, request: JobCreateRequest) -> FineTuningJob:
        self._trainer.client  # noqa: B018 - refuse at once when fine-tuning is not enabled
        method = method_of(request)
        settings = check_tuneplex(request.tuneplex)
        trainer_method_name = trainer_method(method, settings)
        metadata = check_metadata(request.metadata)
        if request.integrations:
            raise InvalidArgument("integrations are not supported here", param="integrations")
        await self._check_base(request.model)
        training = await self._files.version(owner, request.training_file, param="training_file")
        check_file(method, training, "training_file")
        if request.validation_file:
            validation = await self._files.version(
                owner, request.validation_file, param="validation_file"
            )
            check_file(method, validation, "validation_file")
        resolved = hyperparameters.resolve(
            method.given, training.dataset.num_examples, dpo=method.type == "dpo"
        )
        output_id = names.new_output_id()
        values: dict[str, Any] = {
            **settings,
            "method": trainer_method_name,
            "base_model": request.model,
            "dataset": names.file_dataset_ref(request.training_file),
            "output_name": names.output_adapter(output_id),
            "publish_checkpoints": True,
            "epochs": float(resolved.n_epochs),
            "batch_size": resolved.batch_size,
        }
        if request.validation_file:
            values["validation_dataset"] = names.file_dataset_ref(request.validation_file)
        if request.seed is not None:
            values["seed"] = request.seed
        if resolved.beta is not None:
            values["dpo_beta"] = resolved.beta
        config = config_from_values(values)
        values["learning_rate"] = config.learning_rate * resolved.learning_rate_multiplier
        config = config_from_values(values)
        # The wire gets what the validation made of each value (JSON's "8" or 20.0 as ints).
        checked = config.model_dump()
        values = {name: checked[name] for name in values}
        suffix = request.suffix or ""
        labels = {
            names.OWNER_LABEL: owner,
            names.MODEL_LABEL: request.model,
            names.SUFFIX_LABEL: suffix,
            names.TRAINING_FILE_LABEL: request.training_file,
            names.VALIDATION_FILE_LABEL: request.validation_file or "",
            names.METADATA_LABEL: metadata_label(metadata),
            names.SEED_LABEL: str(config.seed),
            names.FINE_TUNED_MODEL_LABEL: names.fine_tuned_model(
                request.model, owner, suffix, output_id
            ),
            names.HYPERPARAMETERS_LABEL: json.dumps(resolved.openai(), separators=(",", ":")),
            names.METHOD_LABEL: method.type,
        }
        labels = {k: v for k, v in labels.items() if v}
        job = await self._trainer.call("create_job", spec_from_values(values), labels=labels)
        return job_object(job)

    async def _check_base(self, model: str) -> None:
        unknown = InvalidArgument(
            f"The model {shown(model)} does not exist or is not a base model you can "
            "fine-tune here",
            param="model",
            code="model_not_found",
        )
        if names.is_fine_tuned(model):
            raise unknown
        try:
            with registry_outage("resolve"):
                await self._registry.resolve("model", model)
        except (NotFound, InvalidArgument):
            raise unknown from None

    async def job(self, owner: str, fine_tuning_job_id: str) -> trainer_pb2.Job:
        trainer_id = names.trainer_job_id(fine_tuning_job_id)
        if trainer_id is None:
            raise job_not_found(fine_tuning_job_id)
        try:
            job: trainer_pb2.Job = await self._trainer.call("get_job", trainer_id)
        except (NotFound, InvalidArgument):
            raise job_not_found(fine_tuning_job_id) from None
        if not _is_fine_tuning_of(job, owner):
            raise job_not_found(fine_tuning_job_id)
        return job

    async def retrieve(self, owner: str, fine_tuning_job_id: str) -> FineTuningJob:
        return job_object(await self.job(owner, fine_tuning_job_id))

    async def list(
        self, owner: str, *, after: str | None, limit: int, metadata: dict[str, str] | None
    ) -> JobList:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(f"limit must be from 1 to {MAX_LIMIT}", param="limit")
        jobs = await self._trainer.call(
            "list_jobs", trainer_pb2.JOB_STATE_UNSPECIFIED, 100, {names.OWNER_LABEL: owner}
        )
        jobs = [j for j in jobs if _is_fine_tuning_of(j, owner)]
        if metadata is not None:
            jobs = [j for j in jobs if _metadata_matches(j, metadata)]
        jobs = after_cursor(jobs, after, lambda j: names.job_id(j.id))
        return JobList(data=[job_object(j) for j in jobs[:limit]], has_more=len(jobs) > limit)

    async def cancel(self, owner: str, fine_tuning_job_id: str) -> FineTuningJob:
        job = await self.job(owner, fine_tuning_job_id)
        return job_object(await self._trainer.call("cancel_job", job.id))

    async def pause(self, owner: str, fine_tuning_job_id: str) -> FineTuningJob:
        job = await self.job(owner, fine_tuning_job_id)
        try:
            return job_object(await self._trainer.call("pause_job", job.id))
        except FailedPrecondition:
            raise InvalidArgument(
                f"job {fine_tuning_job_id} is {status_of(job.state)}; only a queued or running "
                "job can be paused",
                param="fine_tuning_job_id",
                code="invalid_job_state",
            ) from None

    async def resume(self, owner: str, fine_tuning_job_id: str) -> FineTuningJob:
        job = await self.job(owner, fine_tuning_job_id)
        try:
            return job_object(await self._trainer.call("resume_job", job.id))
        except FailedPrecondition:
            raise InvalidArgument(
                f"job {fine_tuning_job_id} is {status_of(job.state)}, not paused; only a "
                "paused job can be resumed",
                param="fine_tuning_job_id",
                code="invalid_job_state",
            ) from None

    async def events(
        self, owner: str, fine_tuning_job_id: str, *, after: str | None, limit: int
    ) -> JobEventList:
        job = await self.job(owner, fine_tuning_job_id)
        recorded = await self._trainer.recorded_events(job.id, final=status_of(job.state) in FINAL)
        return job_events.page(job.id, recorded, after=after, limit=limit)

    async def checkpoints(
        self, owner: str, fine_tuning_job_id: str, *, after: str | None, limit: int
    ) -> JobCheckpointList:
        """The published checkpoints, newest first (a job publishes them when it succeeds)."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(f"limit must be from 1 to {MAX_LIMIT}", param="limit")
        job = await self.job(owner, fine_tuning_job_id)
        found = await self._trainer.call("list_checkpoints", job.id)
        fine_tuned = job.labels.get(names.FINE_TUNED_MODEL_LABEL, "")
        items = [
            JobCheckpoint(
                id=names.checkpoint_id(job.id, c.step),
                created_at=c.create_time.seconds,
                fine_tuned_model_checkpoint=names.checkpoint_model(fine_tuned, c.step),
                fine_tuning_job_id=fine_tuning_job_id,
                metrics=_checkpoint_metrics(c),
                step_number=c.step,
            )
            for c in sorted(found, key=lambda c: c.step, reverse=True)
            if c.published
        ]
        items = after_cursor(items, after, lambda c: c.id)
        chosen = items[:limit]
        return JobCheckpointList(data=chosen, **page_fields(chosen, len(items) > limit))


def _checkpoint_metrics(checkpoint: trainer_pb2.Checkpoint) -> dict[str, float]:
    metrics = dict(checkpoint.metrics)
    out = {"step": float(checkpoint.step)}
    for ours, theirs in (
        ("loss", "train_loss"),
        ("train_loss", "train_loss"),
        ("eval_loss", "valid_loss"),
        ("valid_loss", "valid_loss"),
    ):
        if ours in metrics:
            out[theirs] = metrics[ours]
    for key, value in metrics.items():
        out.setdefault(key, value)
    return out


def _is_fine_tuning_of(job: trainer_pb2.Job, owner: str) -> bool:
    return job.labels.get(names.OWNER_LABEL) == owner and names.FINE_TUNED_MODEL_LABEL in job.labels


def _metadata_matches(job: trainer_pb2.Job, wanted: dict[str, str]) -> bool:
    metadata = _json_label(job, names.METADATA_LABEL) or {}
    if not wanted:
        return not metadata
    return all(metadata.get(k) == v for k, v in wanted.items())
