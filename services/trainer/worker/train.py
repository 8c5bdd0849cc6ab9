"""Training work: registry -> sft/pretrain/dpo recipe -> registry.

Pulls the base model and datasets into the shared cache, runs the method's recipe with
checkpoints in the job folder (resuming from the newest complete one), and publishes the result
with its report, loss curve and lineage as a new version. Under torchrun every rank runs this;
only rank 0 reports and publishes. A spec with an ``evaluation`` is also scored on its eval set
(``training_eval.py``): checked before training, every checkpoint scored before publishing when
asked (the best one is published), the published version recorded and promoted after.
With early stopping the recipe's output already holds the step of the best eval loss (its
report says which and why), and that is what is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.client.registry import RegistryClient
from services.trainer.artifacts import RegistryPullCache, dataset_file, version_ref
from services.trainer.worker.protocol import CHECKPOINTS_DIR, WorkerConfig, emit, is_rank_zero
from services.trainer.worker.publish import Publication, publish_checkpoints, publish_once
from services.trainer.worker.training_eval import TrainingEvaluation, publication_folder

if TYPE_CHECKING:  # the recipes import the ML stack, which only the work itself may load
    from services.trainer.recipes.common import RecipeConfig


def run_recipe(recipe: RecipeConfig, output: Path) -> dict[str, Any]:
    if recipe.training.method == "continued_pretraining":
        from services.trainer.recipes import pretrain

        return pretrain.run(recipe, output)
    if recipe.training.method == "dpo":
        from services.trainer.recipes import dpo

        return dpo.run(recipe, output)
    from services.trainer.recipes import sft

    return sft.run(recipe, output)


def run(config: WorkerConfig, job_dir: Path, client: RegistryClient) -> str | None:
    """Train and publish (and evaluate, when asked); returns the published ``name@version``
    (rank 0)."""
    from services.trainer.recipes.common import RecipeConfig, name_base_model
    from services.trainer.recipes.report import record_checkpoint_choice

    t = config.training
    assert t is not None
    emit("state", state="VALIDATING", message="fetching base model and datasets")
    cache = RegistryPullCache(client, config.cache_dir)
    evaluation = None
    if t.evaluation is not None and is_rank_zero():
        evaluation = TrainingEvaluation(config, job_dir, client, cache)

    def train() -> Publication | None:
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
            checkpoint_dir=job_dir / CHECKPOINTS_DIR,
            deepspeed_config=config.deepspeed_config,
            report=lineage,
        )
        output = job_dir / "output"
        report = run_recipe(recipe, output)
        if not is_rank_zero():
            return None
        folder = output
        metrics = {k: float(v) for k, v in report["metrics"].items()}
        # The output holds the last step's weights, or early stopping's best step's.
        output_step = report.get("published_step", report["steps"])
        if "published_step" in report:
            metrics |= {"published_step": float(output_step)}
        if evaluation is not None and evaluation.evaluation.each_checkpoint:
            choice = evaluation.choose_checkpoint(output, output_step, version_ref(model))
            folder = publication_folder(choice.candidate, output, job_dir / "published")
            name_base_model(folder, model_dir, version_ref(model))  # the checkpoint's config
            record_checkpoint_choice(
                folder,
                step=choice.candidate.step,
                score=choice.score,
                because=choice.because,
                scores=choice.scores,
            )
            metrics |= {"published_step": float(choice.candidate.step)}
            metrics |= {"published_checkpoint_score": choice.score}
        return Publication(
            folder=folder,
            description=f"{t.method} of {version_ref(model)} on {version_ref(dataset)}",
            source=f"trainer job {config.job_id}",
            lineage=lineage,
            metrics=metrics,
            hyperparameters=t.model_dump(mode="json"),
            base_model=version_ref(model),
            labels=config.labels,
        )

    published = publish_once(client, t.output_kind, t.output_name, config.job_id, train)
    if published is not None and t.publish_checkpoints:
        checkpoints, staging = job_dir / CHECKPOINTS_DIR, job_dir / "published-checkpoints"
        publish_checkpoints(client, published, config.job_id, checkpoints, staging, config.labels)
    if published is not None and evaluation is not None:
        evaluation.finish(published)
    return published
