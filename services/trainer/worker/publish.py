"""The one step every kind of work ends with: publish the result once per job (and, for a
training job with ``publish_checkpoints``, each kept checkpoint's adapter beside it).

A worker killed after the registry committed its push but before it reported is retried; the
retry must find the version its job published (``lineage.job_id``) rather than redo the work
and publish a second one. The registry's upload is atomic, so a worker killed before that
leaves no visible version and the next attempt starts over.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2

from services.client.registry import RegistryClient
from services.common.errors import FailedPrecondition, NotFound, TuneplexError
from services.common.stubs import registry_pb2
from services.common.training_spec import checkpoint_adapter_name
from services.trainer.artifacts import version_ref
from services.trainer.checkpoints import CheckpointInfo, complete_checkpoints
from services.trainer.recipes.report import PREFERENCE_METRICS
from services.trainer.worker.protocol import emit

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINER_STATE = "trainer_state.json"
# The label that tells a published checkpoint from the job's output, and which step it is.
CHECKPOINT_STEP_LABEL = "tuneplex.checkpoint_step"
# What the Trainer logs -> a checkpoint's metrics (Checkpoint.metrics).
CHECKPOINT_METRICS = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "mean_token_accuracy": "token_accuracy",
    "eval_mean_token_accuracy": "eval_token_accuracy",
}


@dataclass(frozen=True)
class Publication:
    """What a finished piece of work pushes."""

    folder: Path
    description: str
    source: str
    # Lineage fields (job_id, base_model, dataset, adapter, ...) as ``name@version`` strings;
    # an evaluation's ``databases`` is a list of them.
    lineage: Mapping[str, str | list[str]]
    metrics: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] | None = None
    base_model: str | None = None  # an adapter names the base it applies to
    # The job's labels (WorkerConfig.labels): the version carries its owner like the job.
    labels: Mapping[str, str] = field(default_factory=dict)


def versions_of(client: RegistryClient, kind: str, name: str) -> list[registry_pb2.ArtifactVersion]:
    """Every version of ``kind`` ``name``; none when the name is unknown."""
    try:
        return list(client.versions(kind, name))
    except NotFound:
        return []


def own_version(
    client: RegistryClient,
    kind: str,
    name: str,
    job_id: str,
    *,
    name_taken: TuneplexError | None = None,
) -> registry_pb2.ArtifactVersion | None:
    """The version of ``kind`` ``name`` an earlier attempt of ``job_id`` published, if any.
    With ``name_taken``, the name must otherwise be unused: that error when it is not."""
    versions = versions_of(client, kind, name)
    ours = next((v for v in versions if v.lineage.job_id == job_id), None)
    if ours is None and versions and name_taken is not None:
        raise name_taken
    return ours


def publish_once(
    client: RegistryClient,
    kind: str,
    name: str,
    job_id: str,
    work: Callable[[], Publication | None],
    *,
    name_taken: TuneplexError | None = None,
    is_output: bool = True,
) -> str | None:
    """Run ``work`` and push what it returns as a new version of ``kind`` ``name``, unless an
    earlier attempt of ``job_id`` already published one. Returns ``name@version``; None when
    ``work`` returns None (a torchrun rank other than 0: it trains, rank 0 publishes).
    ``is_output``: it is the job's output, announced as such (a ``published`` event); a
    published checkpoint is announced by its caller instead."""
    done = own_version(client, kind, name, job_id, name_taken=name_taken)
    if done is not None:
        ref = version_ref(done)
        emit("log", message=f"an earlier attempt published {ref}")
        if is_output:
            emit("published", output=ref, metrics=dict(done.lineage.metrics))
        return ref
    publication = work()
    if publication is None:
        return None
    # ParseDict rather than Lineage(**fields): each key is checked against the message's fields.
    lineage = json_format.ParseDict(
        {**publication.lineage, "metrics": publication.metrics}, registry_pb2.Lineage()
    )
    if publication.hyperparameters is not None:
        hyperparameters = struct_pb2.Struct()
        hyperparameters.update(publication.hyperparameters)
        lineage.hyperparameters.CopyFrom(hyperparameters)
    published = client.push(
        kind,
        name,
        publication.folder,
        base_model=publication.base_model,
        description=publication.description,
        lineage=lineage,
        source=publication.source,
        labels=publication.labels,
    )
    ref = version_ref(published)
    if is_output:
        emit("published", output=ref, metrics=publication.metrics)
    return ref


def checkpoint_metrics(checkpoint: Path) -> dict[str, float]:
    """What the Trainer logged at the checkpoint's own step (its ``trainer_state.json``), by
    tuneplex's names: ``train_loss``, ``eval_loss``, DPO's reward accuracy and margin, ..."""
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    step = state.get("global_step")
    names = CHECKPOINT_METRICS | {
        prefix + trl: prefix + ours
        for trl, ours in PREFERENCE_METRICS.items()
        for prefix in ("", "eval_")
    }
    metrics: dict[str, float] = {"step": float(step)} if isinstance(step, int) else {}
    for logged in state.get("log_history", []):
        if logged.get("step") != step:
            continue
        for logged_name, ours in names.items():
            value = logged.get(logged_name)
            if isinstance(value, int | float) and math.isfinite(value):
                metrics[ours] = float(value)
    return metrics


def checkpoint_adapter_folder(checkpoint: Path, folder: Path, base_model: str) -> Path:
    """The adapter alone out of a checkpoint (no optimizer state, no Trainer state), naming
    its base by registry ref as the final adapter does."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        shutil.copyfile(checkpoint / name, folder / name)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = base_model
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def publish_checkpoints(
    client: RegistryClient,
    output: str,
    job_id: str,
    checkpoint_dir: Path,
    staging: Path,
    labels: Mapping[str, str],
) -> list[str]:
    """Publish each kept complete checkpoint's adapter as ``<name>-step-<N>`` beside the job's
    ``output`` adapter (``name@version``): on its base model, with its lineage (the checkpoint's
    own metrics) and ``labels`` plus ``tuneplex.checkpoint_step``. Once per job and checkpoint,
    as the output is, so a retried worker publishes only those not yet published. Emits a
    ``checkpoint_published`` event for each; returns their ``name@version``."""
    name = output.partition("@")[0]
    final = own_version(client, "adapter", name, job_id)
    if final is None:
        raise FailedPrecondition(f"{output} is not published by {job_id}", code="not_published")
    lineage_fields = json_format.MessageToDict(final.lineage, preserving_proto_field_name=True)
    lineage = {
        key: value
        for key, value in lineage_fields.items()
        if key not in ("metrics", "hyperparameters")
    }
    hyperparameters = json_format.MessageToDict(final.lineage.hyperparameters) or None
    base_model = final.adapter.base_model or final.lineage.base_model
    published = []
    for checkpoint in complete_checkpoints(checkpoint_dir):
        step = checkpoint.step

        def stage(checkpoint: CheckpointInfo = checkpoint, step: int = step) -> Publication:
            return Publication(
                folder=checkpoint_adapter_folder(
                    checkpoint.path, staging / f"step-{step}", base_model
                ),
                description=f"checkpoint at step {step} of {output}",
                source=f"trainer job {job_id}",
                lineage=lineage,
                metrics=checkpoint_metrics(checkpoint.path),
                hyperparameters=hyperparameters,
                base_model=base_model,
                labels={**labels, CHECKPOINT_STEP_LABEL: str(step)},
            )

        ref = publish_once(
            client, "adapter", checkpoint_adapter_name(name, step), job_id, stage, is_output=False
        )
        assert ref is not None  # ``stage`` always returns a publication
        emit("checkpoint_published", step=step, version=ref)
        published.append(ref)
    return published
