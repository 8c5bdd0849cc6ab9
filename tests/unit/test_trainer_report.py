"""Figures the training report derives from the Trainer's log history."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.trainer.recipes.report import (
    final_metrics,
    steady_tokens_per_second,
    write_loss_curve,
)

HISTORY = [
    {
        "step": 1,
        "loss": 4.0,
        "train_runtime": 10.0,
        "num_input_tokens_seen": 100,
        "mean_token_accuracy": 0.4,
    },
    {
        "step": 2,
        "loss": 3.0,
        "train_runtime": 11.0,
        "num_input_tokens_seen": 200,
        "mean_token_accuracy": 0.5,
    },
    {"step": 2, "eval_loss": 2.5, "eval_mean_token_accuracy": 0.55},
    {
        "step": 3,
        "loss": 2.0,
        "train_runtime": 13.0,
        "num_input_tokens_seen": 300,
        "mean_token_accuracy": 0.6,
    },
]


def test_steady_speed_leaves_out_the_first_step_and_earlier_attempts():
    assert steady_tokens_per_second(HISTORY) == pytest.approx(200 / 3.0)
    assert steady_tokens_per_second(HISTORY, after_step=1) == pytest.approx(100 / 2.0)
    assert steady_tokens_per_second(HISTORY, after_step=2) == 0.0


def test_final_metrics_take_first_and_last_losses():
    metrics = final_metrics(HISTORY, SimpleNamespace(training_loss=3.0))
    assert (metrics["first_train_loss"], metrics["train_loss"]) == (4.0, 2.0)
    assert metrics["token_accuracy"] == 0.6 and metrics["eval_loss"] == 2.5
    assert metrics["eval_token_accuracy"] == 0.55


def test_loss_curve_is_a_png(tmp_path):
    write_loss_curve(HISTORY, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
