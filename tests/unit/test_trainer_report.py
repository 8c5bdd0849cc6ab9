"""Figures the training report derives from the Trainer's log history and state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.trainer.recipes.report import (
    final_metrics,
    published_weights,
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


def trainer_state(**fields) -> SimpleNamespace:
    evals = [
        {"step": 2, "eval_loss": 1.0},
        {"step": 4, "eval_loss": 1.25},
        {"step": 6, "eval_loss": 1.5},
    ]
    values = dict(
        log_history=evals, global_step=6, max_steps=40, best_global_step=2, best_metric=1.0
    )
    return SimpleNamespace(**(values | fields))


def test_the_report_names_the_best_step_early_stopping_published():
    assert published_weights(trainer_state(), best_step=2, patience=2) == {
        "published_step": 2,
        "published_because": "best eval_loss 1.0000 at step 2 "
        "(early stopping after 2 evaluations without improvement)",
    }
    ran_to_the_end = published_weights(trainer_state(max_steps=6), best_step=2, patience=5)
    assert ran_to_the_end["published_because"] == (
        "best eval_loss 1.0000 at step 2 (best of 3 evaluations; no early stop before the last "
        "step)"
    )


def test_the_report_says_last_step_when_no_best_was_loaded():
    plain = trainer_state(best_global_step=0, best_metric=None)
    assert published_weights(plain, best_step=None) == {}  # no early stopping: no choice made
    assert published_weights(plain, best_step=None, patience=2) == {
        "published_step": 6,
        "published_because": "last step",
    }
    lost = published_weights(trainer_state(), best_step=None, patience=2)
    assert lost["published_because"] == "last step (the best checkpoint, step 2, was not found)"


def test_eval_metrics_are_those_of_the_published_step():
    metrics = final_metrics(
        HISTORY + [{"step": 3, "eval_loss": 2.9}],
        SimpleNamespace(training_loss=3.0),
        published_step=2,
    )
    assert metrics["eval_loss"] == 2.5 and metrics["eval_token_accuracy"] == 0.55
    last = final_metrics(
        HISTORY + [{"step": 3, "eval_loss": 2.9}], SimpleNamespace(training_loss=3.0)
    )
    assert last["eval_loss"] == 2.9
