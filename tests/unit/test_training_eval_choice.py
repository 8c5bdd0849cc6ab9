"""Which weights a training job publishes when it scores its checkpoints: the best score, the
later step of equal ones, and a published checkpoint carries its own weights with the run's
report, never the Trainer's optimizer state."""

from __future__ import annotations

import json

from services.trainer.checkpoints import MARKER
from services.trainer.recipes.report import record_checkpoint_choice
from services.trainer.worker.training_eval import (
    Candidate,
    best_of,
    candidates,
    publication_folder,
)


def checkpoint(root, step: int, *, complete: bool = True, weights: str = "") -> None:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_text(weights or f"weights of step {step}")
    (folder / "adapter_config.json").write_text("{}")
    (folder / "optimizer.pt").write_text("optimizer state")
    if complete:
        (folder / MARKER).write_text(folder.name)


def test_the_best_score_wins_and_a_tie_goes_to_the_later_step(tmp_path):
    a, b, c = (Candidate(s, tmp_path / str(s)) for s in (2, 4, 6))
    assert best_of([(a, 0.5), (b, 0.8), (c, 0.6)]) == (b, 0.8)
    assert best_of([(a, 0.8), (b, 0.8), (c, 0.6)]) == (b, 0.8)
    assert best_of([(a, 0.0), (b, 0.0), (c, 0.0)]) == (c, 0.0)


def test_candidates_are_the_complete_checkpoints_then_the_final_weights(tmp_path):
    root, output = tmp_path / "checkpoints", tmp_path / "output"
    checkpoint(root, 2)
    checkpoint(root, 4, complete=False)  # a killed save: not a checkpoint
    checkpoint(root, 6)
    # The checkpoint of the last step holds the final weights: scored once, as the output.
    assert candidates(root, output, 6) == [
        Candidate(2, root / "checkpoint-2"),
        Candidate(6, output),
    ]


def test_a_published_checkpoint_has_its_weights_and_the_runs_report(tmp_path):
    root, output = tmp_path / "checkpoints", tmp_path / "output"
    checkpoint(root, 2, weights="early weights")
    output.mkdir()
    (output / "adapter_model.safetensors").write_text("final weights")
    (output / "adapter_config.json").write_text("{}")
    (output / "tokenizer.json").write_text("tokenizer")
    (output / "training_report.json").write_text(json.dumps({"steps": 6}))
    chosen = Candidate(2, root / "checkpoint-2")

    folder = publication_folder(chosen, output, tmp_path / "published")
    assert (folder / "adapter_model.safetensors").read_text() == "early weights"
    assert (folder / "tokenizer.json").read_text() == "tokenizer"
    assert not (folder / "optimizer.pt").exists()
    report = record_checkpoint_choice(
        folder,
        step=2,
        score=0.75,
        because="best of 2 checkpoints on caps@1 by score",
        scores=[{"step": 2, "score": 0.75}, {"step": 6, "score": 0.5}],
    )
    assert report["steps"] == 6 and report["published_step"] == 2
    assert json.loads((folder / "training_report.json").read_text()) == report
    assert (output / "adapter_model.safetensors").read_text() == "final weights"  # untouched
    # The final weights winning publish the output itself.
    assert publication_folder(Candidate(6, output), output, tmp_path / "other") == output
