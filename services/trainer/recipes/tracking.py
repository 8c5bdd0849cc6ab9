"""Where a training run's metrics go besides the job's events: TensorBoard event files always
(they are stored with the version, in ``runs/``), MLflow and Weights & Biases only when the
user configured them in the worker's environment and their package is installed. Neither is
ever required: a tracker that is off says why in the job's log, and training goes on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The folder of the published version that holds the TensorBoard event files:
# `tuneplex adapters pull sql-lora@3 d && tensorboard --logdir d/runs`.
RUNS_DIR = "runs"


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class Trackers:
    """The transformers ``report_to`` integrations to turn on (TensorBoard is ours, added as a
    callback, so it is not among them), environment defaults they need, and one line for the
    job's log."""

    report_to: list[str]
    env_defaults: dict[str, str] = field(default_factory=dict)
    message: str = ""


def choose_trackers(
    environ: Mapping[str, str],
    wandb_dir: Path,
    is_importable: Callable[[str], bool] = importable,
) -> Trackers:
    """MLflow when ``MLFLOW_TRACKING_URI`` is set, W&B when ``WANDB_PROJECT`` is set (offline
    unless ``WANDB_MODE`` says otherwise: a worker often has no route to wandb.ai, and an online
    login prompt would hang a job), each only if its package imports. W&B writes its run files
    to ``wandb_dir`` unless ``WANDB_DIR`` is set (its default, the working directory, is the
    service's code folder for a local worker)."""
    report_to: list[str] = []
    env_defaults: dict[str, str] = {}
    said = [f"TensorBoard events go to the version's {RUNS_DIR}/ folder"]
    if not environ.get("MLFLOW_TRACKING_URI"):
        said.append("MLflow off (MLFLOW_TRACKING_URI is not set)")
    elif not is_importable("mlflow"):
        said.append("MLflow off: MLFLOW_TRACKING_URI is set but mlflow is not installed")
    else:
        report_to.append("mlflow")
        said.append("MLflow on (MLFLOW_TRACKING_URI)")  # the URI may carry a password
    if not environ.get("WANDB_PROJECT"):
        said.append("W&B off (WANDB_PROJECT is not set)")
    elif not is_importable("wandb"):
        said.append("W&B off: WANDB_PROJECT is set but wandb is not installed")
    else:
        report_to.append("wandb")
        mode = environ.get("WANDB_MODE") or "offline"
        if not environ.get("WANDB_MODE"):
            env_defaults["WANDB_MODE"] = mode
        if not environ.get("WANDB_DIR"):
            env_defaults["WANDB_DIR"] = str(wandb_dir)
        said.append(f"W&B on (project {environ['WANDB_PROJECT']}, mode {mode})")
    return Trackers(report_to, env_defaults, "experiment tracking: " + "; ".join(said))
