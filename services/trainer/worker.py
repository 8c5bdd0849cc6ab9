"""The job process: registry -> recipe -> registry.

    python -m services.trainer.worker --job-dir DIR

Reads ``DIR/worker.json`` (written by the service), pulls the base model and datasets into the
shared cache, runs the method's recipe with checkpoints in ``DIR/checkpoints`` (resuming from
the newest complete one), and publishes the result with its report, loss curve and lineage as a
new registry version. Talks to the service only through event lines on stdout. Exit codes: 0
published, 3 the job itself is wrong (no retry), anything else a crash (the service resumes).
Under torchrun every rank runs this; only rank 0 reports and publishes. An export job pulls
the adapter and its base instead and runs the export recipe (``worker_export.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from google.protobuf import struct_pb2
from pydantic import BaseModel, ConfigDict, model_validator

from services.common.errors import TuneplexError, Unavailable
from services.trainer.artifacts import (
    ArtifactCache,
    dataset_file,
    published_by,
    version_ref,
    versions_of,
)
from services.trainer.export_spec import ExportConfig
from services.trainer.recipes.common import EXIT_DOMAIN_ERROR, RecipeConfig, emit
from services.trainer.runners.kubernetes import CONFIG_ENV, DEEPSPEED_ENV
from services.trainer.runners.local import bind_to_parent
from services.trainer.spec import TrainingConfig

REGISTRY_KEY_ENV = "TUNEPLEX_TRAINER_REGISTRY_API_KEY"


class WorkerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    # Exactly one of these: what the job does.
    training: TrainingConfig | None = None
    export: ExportConfig | None = None
    registry_target: str
    cache_dir: Path
    deepspeed_config: Path | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> WorkerConfig:
        if (self.training is None) == (self.export is None):
            raise ValueError("a worker config holds exactly one of training and export")
        return self


def is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run_recipe(recipe: RecipeConfig, output: Path) -> dict:
    if recipe.training.method == "continued_pretraining":
        from services.trainer.recipes import pretrain

        return pretrain.run(recipe, output)
    from services.trainer.recipes import sft

    return sft.run(recipe, output)


def run(config: WorkerConfig, job_dir: Path) -> str | None:
    """Train and publish; returns the published ``name@version`` (rank 0)."""
    from services.client.registry import RegistryClient
    from services.common.stubs import registry_pb2

    t = config.training
    assert t is not None
    emit("state", state="VALIDATING", message="fetching base model and datasets")
    client = RegistryClient(config.registry_target, api_key=os.environ.get(REGISTRY_KEY_ENV))
    try:
        done = published_by(versions_of(client, t.output_kind, t.output_name), config.job_id)
        if done is not None:
            ref = version_ref(done)
            emit("log", message=f"an earlier attempt published {ref}")
            emit("published", output=ref, metrics=dict(done.lineage.metrics))
            return ref
        cache = ArtifactCache(client, config.cache_dir)
        model, model_dir = cache.fetch("model", t.base_model, "training.base_model")
        dataset, data_dir = cache.fetch("dataset", t.dataset, "training.dataset")
        validation = eval_file = None
        if t.validation_dataset:
            validation, eval_dir = cache.fetch(
                "dataset", t.validation_dataset, "training.validation_dataset"
            )
            eval_file = dataset_file(eval_dir, t.validation_dataset, "training.validation_dataset")
        lineage = {
            "job_id": config.job_id,
            "base_model": version_ref(model),
            "dataset": version_ref(dataset),
            "validation_dataset": version_ref(validation) if validation else "",
        }
        recipe = RecipeConfig(
            training=t,
            model_dir=model_dir,
            train_file=dataset_file(data_dir, t.dataset, "training.dataset"),
            eval_file=eval_file,
            checkpoint_dir=job_dir / "checkpoints",
            deepspeed_config=config.deepspeed_config,
            report=lineage,
        )
        output = job_dir / "output"
        report = run_recipe(recipe, output)
        if not is_rank_zero():
            return None
        hyperparameters = struct_pb2.Struct()
        hyperparameters.update(t.model_dump(mode="json"))
        metrics = {k: float(v) for k, v in report["metrics"].items()}
        published = client.push(
            t.output_kind,
            t.output_name,
            output,
            base_model=version_ref(model),
            description=f"{t.method} of {version_ref(model)} on {version_ref(dataset)}",
            lineage=registry_pb2.Lineage(
                **lineage, hyperparameters=hyperparameters, metrics=metrics
            ),
            source=f"trainer job {config.job_id}",
        )
        ref = version_ref(published)
        emit("published", output=ref, metrics=metrics)
        return ref
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one trainer job attempt.")
    parser.add_argument("--job-dir", type=Path, required=True)
    args = parser.parse_args()
    bind_to_parent()
    # On Kubernetes the config comes in the environment (the service's volume is not shared).
    raw = os.environ.get(CONFIG_ENV) or (args.job_dir / "worker.json").read_text()
    config = WorkerConfig.model_validate_json(raw)
    args.job_dir.mkdir(parents=True, exist_ok=True)
    if deepspeed := os.environ.get(DEEPSPEED_ENV):
        path = args.job_dir / "deepspeed.json"
        path.write_text(deepspeed)
        config = config.model_copy(update={"deepspeed_config": path})
    try:
        if config.export is not None:
            from services.trainer.worker_export import run_export

            run_export(config, args.job_dir)
        else:
            run(config, args.job_dir)
    except Unavailable as exc:
        # The registry being down is transient: exit as a crash so the service retries.
        print(f"registry unavailable: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except TuneplexError as exc:
        emit(
            "failed",
            code=exc.code or type(exc).__name__.lower(),
            message=exc.message,
            param=exc.param or "",
        )
        sys.exit(EXIT_DOMAIN_ERROR)


if __name__ == "__main__":
    main()
