"""Which experiment trackers a training run reports to: TensorBoard always, MLflow and W&B
only when configured in the worker's environment and installed."""

from __future__ import annotations

from pathlib import Path

from services.trainer.recipes.tracking import choose_trackers

WANDB_DIR = Path("/jobs/j1/output-wandb")


def installed(*modules: str):
    return lambda name: name in modules


def test_nothing_configured_reports_to_tensorboard_only_and_says_why():
    trackers = choose_trackers({}, WANDB_DIR, installed("mlflow", "wandb"))
    assert trackers.report_to == [] and trackers.env_defaults == {}
    assert "runs/" in trackers.message
    assert "MLflow off (MLFLOW_TRACKING_URI is not set)" in trackers.message
    assert "W&B off (WANDB_PROJECT is not set)" in trackers.message


def test_configured_but_not_installed_is_off_with_the_reason():
    env = {"MLFLOW_TRACKING_URI": "http://u:secret@mlflow:5000", "WANDB_PROJECT": "tune"}
    trackers = choose_trackers(env, WANDB_DIR, installed())
    assert trackers.report_to == []
    assert "mlflow is not installed" in trackers.message
    assert "wandb is not installed" in trackers.message
    assert "secret" not in trackers.message


def test_configured_and_installed_turns_them_on_wandb_offline_by_default():
    env = {"MLFLOW_TRACKING_URI": "http://u:secret@mlflow:5000", "WANDB_PROJECT": "tune"}
    trackers = choose_trackers(env, WANDB_DIR, installed("mlflow", "wandb"))
    assert trackers.report_to == ["mlflow", "wandb"]
    assert trackers.env_defaults == {"WANDB_MODE": "offline", "WANDB_DIR": str(WANDB_DIR)}
    assert "MLflow on" in trackers.message and "mode offline" in trackers.message
    assert "secret" not in trackers.message


def test_the_users_wandb_mode_and_dir_are_kept():
    env = {"WANDB_PROJECT": "tune", "WANDB_MODE": "online", "WANDB_DIR": "/data/wandb"}
    trackers = choose_trackers(env, WANDB_DIR, installed("wandb"))
    assert trackers.report_to == ["wandb"] and trackers.env_defaults == {}
    assert "mode online" in trackers.message
