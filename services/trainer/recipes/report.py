"""What a finished run leaves beside its weights: ``training_report.json`` (base model,
hyper-parameters, dataset sha256, hardware, peak memory, wall time, tokens/s, final losses and
token accuracy, the logged loss at every step, which step's weights were published and why) and
``loss_curve.png``."""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

from services.trainer.recipes.chat_data import sha256_file


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def hardware() -> dict:
    import torch

    if torch.cuda.is_available():
        return {
            "device": torch.cuda.get_device_name(0),
            "gpus": torch.cuda.device_count(),
            "torch": torch.__version__,
        }
    return {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# TRL's DPO metrics -> tuneplex's: the share of pairs whose preferred answer the adapter now
# rates above the other (relative to the reference), and the mean gap, beta-scaled.
PREFERENCE_METRICS = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin"}


def preference_metrics(train: list[dict], evals: list[dict]) -> dict[str, float]:
    """DPO's reward accuracy and margin: at the first and the last logged step, and on the
    validation set of the published weights (``eval_``)."""
    metrics: dict[str, float] = {}
    for trl_name, ours in PREFERENCE_METRICS.items():
        logged = [h[trl_name] for h in train if trl_name in h]
        if logged:
            metrics[f"first_{ours}"] = float(logged[0])
            metrics[ours] = float(logged[-1])
        if evals and f"eval_{trl_name}" in evals[-1]:
            metrics[f"eval_{ours}"] = float(evals[-1][f"eval_{trl_name}"])
    return metrics


def final_metrics(
    log_history: list[dict], train_output, published_step: int | None = None
) -> dict[str, float]:
    """First and last train loss; the eval loss and accuracy of the published weights (the
    evaluation at ``published_step``, else the last one); DPO's reward accuracy and margin."""
    train = [h for h in log_history if "loss" in h]
    evals = [h for h in log_history if "eval_loss" in h]
    evals = [h for h in evals if h.get("step") == published_step] or evals
    metrics = {
        "first_train_loss": float(train[0]["loss"]) if train else float("nan"),
        "train_loss": float(train[-1]["loss"]) if train else float("nan"),
        "train_runtime_loss": float(train_output.training_loss),
    }
    if train and "mean_token_accuracy" in train[-1]:
        metrics["token_accuracy"] = float(train[-1]["mean_token_accuracy"])
    if evals:
        metrics["eval_loss"] = float(evals[-1]["eval_loss"])
        if "eval_mean_token_accuracy" in evals[-1]:
            metrics["eval_token_accuracy"] = float(evals[-1]["eval_mean_token_accuracy"])
    return metrics | preference_metrics(train, evals)


def loss_history(log_history: list[dict]) -> dict[str, list[list[float]]]:
    """``{"train": [[step, loss], ...], "eval": [[step, eval_loss], ...]}``: what
    ``tuneplex experiments compare`` takes best losses and overlaid curves from, without
    reading the event files."""
    return {
        "train": [[h["step"], float(h["loss"])] for h in log_history if "loss" in h],
        "eval": [[h["step"], float(h["eval_loss"])] for h in log_history if "eval_loss" in h],
    }


def write_loss_curve(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def steady_tokens_per_second(log_history: list[dict], after_step: int = 0) -> float:
    """Tokens/s from the first logged step to the last (the first step's one-off warm-up
    excluded), from the Trainer's cumulative per-log ``train_runtime`` and token counts."""
    logs = [
        h
        for h in log_history
        if "loss" in h and "train_runtime" in h and h.get("step", 0) > after_step
    ]
    if len(logs) < 2:
        return 0.0
    seconds = float(logs[-1]["train_runtime"]) - float(logs[0]["train_runtime"])
    tokens = logs[-1]["num_input_tokens_seen"] - logs[0]["num_input_tokens_seen"]
    return tokens / seconds if seconds > 0 else 0.0


def published_weights(state, *, best_step: int | None, patience: int = 0) -> dict:
    """Which step's weights a run's output holds and why, from the Trainer's ``state``:
    ``published_step`` and ``published_because``. ``best_step`` is the checkpoint loaded back
    at the end (early stopping's best eval loss), None when the output is the last step. Empty
    when there was no choice to make (no early stopping): the weights are those of ``steps``."""
    if best_step is None:
        if not patience:
            return {}
        because = "last step"
        if patience and state.best_global_step:
            because += f" (the best checkpoint, step {state.best_global_step}, was not found)"
        return {"published_step": state.global_step, "published_because": because}
    evals = [h for h in state.log_history if "eval_loss" in h]
    worse = sum(1 for h in evals if h["step"] > best_step)
    if state.global_step < state.max_steps:
        why = f"early stopping after {worse} evaluations without improvement"
    else:
        why = f"best of {len(evals)} evaluations; no early stop before the last step"
    return {
        "published_step": best_step,
        "published_because": f"best eval_loss {state.best_metric:.4f} at step {best_step} ({why})",
    }


def write_report(
    config,
    output: Path,
    trainer,
    train_output,
    *,
    tokens_seen: int,
    started: float,
    first_step: int = 0,
    choices: dict | None = None,
    published: dict | None = None,
) -> dict:
    """``training_report.json`` + ``loss_curve.png`` beside the saved weights. ``published``
    (``published_weights``) says which step they are when a step was chosen."""
    wall = time.monotonic() - started
    runtime = train_output.metrics.get("train_runtime") or wall
    published = published or {}
    metrics = final_metrics(
        trainer.state.log_history, train_output, published.get("published_step")
    )
    metrics["train_runtime_seconds"] = float(runtime)
    metrics["tokens_per_second"] = tokens_seen / runtime if runtime else 0.0
    metrics["steady_tokens_per_second"] = steady_tokens_per_second(
        trainer.state.log_history, first_step
    )
    # All attempts' tokens: the Trainer's count is restored with a resumed checkpoint.
    metrics["trained_tokens"] = float(trainer.state.num_input_tokens_seen)
    metrics["peak_memory_bytes"] = float(peak_memory_bytes())
    metrics["wall_time_seconds"] = wall
    report = {
        **config.report,
        "base_model": config.report.get("base_model", config.training.base_model),
        "method": config.training.method,
        "hyperparameters": config.training.model_dump(mode="json"),
        "dataset_sha256": sha256_file(config.train_file),
        "validation_dataset_sha256": sha256_file(config.eval_file) if config.eval_file else None,
        "hardware": hardware(),
        # What the trainer chose for this device (threads, precision, attention kernel,
        # batching, LM head, gradient checkpointing) and why.
        "runtime": choices or {},
        "steps": trainer.state.global_step,
        # Which step the weights beside this report are, when early stopping chose one.
        **published,
        "metrics": metrics,
        "loss_history": loss_history(trainer.state.log_history),
    }
    (output / "training_report.json").write_text(json.dumps(report, indent=2, default=str))
    write_loss_curve(trainer.state.log_history, output / "loss_curve.png")
    return report


REPORT_FILE = "training_report.json"


def record_checkpoint_choice(
    folder: Path, *, step: int, score: float, because: str, scores: list[dict[str, float]]
) -> dict:
    """Say in ``folder``'s ``training_report.json`` which weights a job published when it
    scored its checkpoints (``evaluation.each_checkpoint``): ``published_step``, its
    ``published_score``, ``published_because`` ("best of 3 checkpoints on shop-sql-heldout@1
    by score") and every candidate's ``checkpoint_scores`` ([{"step", "score"}], by step)."""
    path = folder / REPORT_FILE
    report = json.loads(path.read_text())
    report.update(
        published_step=step,
        published_score=score,
        published_because=because,
        checkpoint_scores=scores,
    )
    path.write_text(json.dumps(report, indent=2, default=str))
    return report
