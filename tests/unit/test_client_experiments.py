"""`tuneplex experiments compare`: the table built from versions, reports and evaluations.

The reports are written by the trainer's own report writer (``recipes/report.py``) from a
Trainer-shaped log history, so a change of what it writes shows here, not only in production.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from google.protobuf import struct_pb2
from rich.console import Console

from services.client.experiments import (
    Experiment,
    build_comparison,
    comparison_table,
    plot_loss_curves,
)
from services.common.stubs import registry_pb2
from services.common.training_spec import TrainingConfig
from services.trainer.recipes.report import record_checkpoint_choice, write_report

DATASET_SHA = "ab" * 32


def history(losses: list[float], evals: dict[int, float]) -> list[dict]:
    """A Trainer's ``log_history``: one entry a step, eval entries at the steps given."""
    out: list[dict] = []
    for i, loss in enumerate(losses, start=1):
        out.append(
            {
                "step": i,
                "loss": loss,
                "train_runtime": 2.0 * i,
                "num_input_tokens_seen": 100 * i,
                "mean_token_accuracy": 0.5,
            }
        )
        if i in evals:
            out.append({"step": i, "eval_loss": evals[i]})
    return out


def trained(tmp_path, name: str, version: int, log: list[dict], **settings) -> Experiment:
    """An adapter version as the trainer publishes it: report from the real writer, lineage
    with the same metrics and hyper-parameters."""
    training = TrainingConfig(
        base_model="smollm2-135m-instruct", dataset="caps", output_name=name, **settings
    )
    folder = tmp_path / f"{name}-{version}"
    folder.mkdir()
    train_file = folder / "train.jsonl"
    train_file.write_text('{"messages": []}\n')
    lineage_fields = {
        "job_id": f"job-{version}",
        "base_model": "smollm2-135m-instruct@1",
        "dataset": "caps@1",
        "validation_dataset": "",
    }
    config = SimpleNamespace(
        training=training, report=lineage_fields, train_file=train_file, eval_file=None
    )
    steps = max(h["step"] for h in log)
    state = SimpleNamespace(log_history=log, global_step=steps, num_input_tokens_seen=100 * steps)
    trainer = SimpleNamespace(state=state)
    train_output = SimpleNamespace(metrics={"train_runtime": 2.0 * steps}, training_loss=1.0)
    report = write_report(
        config, folder, trainer, train_output, tokens_seen=100 * steps, started=time.monotonic()
    )
    hyperparameters = struct_pb2.Struct()
    hyperparameters.update(training.model_dump(mode="json"))
    lineage = registry_pb2.Lineage(
        **lineage_fields, hyperparameters=hyperparameters, metrics=report["metrics"]
    )
    return Experiment(
        kind="adapter",
        version=registry_pb2.ArtifactVersion(
            kind=registry_pb2.ARTIFACT_KIND_ADAPTER, name=name, version=version, lineage=lineage
        ),
        dataset=registry_pb2.ArtifactVersion(
            kind=registry_pb2.ARTIFACT_KIND_DATASET,
            name="caps",
            version=1,
            manifest=registry_pb2.Manifest(sha256=DATASET_SHA),
            dataset=registry_pb2.DatasetInfo(num_examples=64),
        ),
        report=report,
    )


def evaluation(
    model: str, eval_set: str, score: float, graders: str = "g1"
) -> registry_pb2.ArtifactVersion:
    return registry_pb2.ArtifactVersion(
        kind=registry_pb2.ARTIFACT_KIND_EVALUATION,
        name=eval_set.partition("@")[0],
        evaluation=registry_pb2.EvaluationInfo(
            model_kind=registry_pb2.ARTIFACT_KIND_ADAPTER,
            model=model,
            eval_set=eval_set,
            score=score,
            ci_low=score - 0.1,
            ci_high=score + 0.05,
            num_items=40,
            graders_sha256=graders * 32,
        ),
    )


def with_evaluations(e: Experiment, *records: registry_pb2.ArtifactVersion) -> Experiment:
    return Experiment(e.kind, e.version, e.dataset, e.report, list(records))


def rows(comparison) -> dict[str, list[str]]:
    return dict(comparison.rows)


def test_differing_hyperparameters_get_rows_and_the_rest_one_footer(tmp_path):
    a = trained(tmp_path, "caps-lora", 1, history([4.0, 3.0, 2.0], {3: 2.5}), lora_r=8)
    b = trained(
        tmp_path, "caps-lora", 2, history([4.0, 2.0, 1.5, 1.8], {}), lora_r=16, learning_rate=1e-3
    )
    comparison = build_comparison([a, b])
    table = rows(comparison)
    assert comparison.columns == ["caps-lora@1", "caps-lora@2"]
    assert table["lora_r"] == ["8", "16"]
    assert table["learning_rate"] == ["0.0002", "0.001"]
    same = dict(comparison.same_for_all)
    assert same["batch_size"] == "8" and same["target_modules"] == "all-linear"
    assert "lora_r" not in same and "learning_rate" not in same
    # Shown in rows of their own, not again as hyper-parameters.
    assert not {"base_model", "dataset", "output_name", "method"} & set(same)
    assert "base_model" not in table and "output_name" not in table
    assert table["base model"] == ["smollm2-135m-instruct@1"] * 2
    assert table["dataset"] == [f"caps@1 (64 examples, sha256 {DATASET_SHA[:12]})"] * 2
    assert table["method"] == ["lora", "lora"]
    assert table["steps"] == ["3", "4"]
    assert "published weights" not in table  # both published their final weights


def test_losses_speed_and_memory_come_from_the_report(tmp_path):
    a = trained(tmp_path, "caps-lora", 1, history([4.0, 3.0, 2.0], {3: 2.5}))
    b = trained(tmp_path, "caps-lora", 2, history([4.0, 2.0, 1.5, 1.8], {}))
    table = rows(build_comparison([a, b]))
    assert table["final train loss"] == ["2.0000", "1.8000"]
    assert table["final eval loss"] == ["2.5000", ""]
    # Best: the lowest eval loss when evaluated, else the lowest train loss, with its step.
    assert table["best loss"] == ["2.5000 (eval, step 3)", "1.5000 (train, step 3)"]
    # 100 tokens a step, 2 s a step (steady speed, first step left out).
    assert table["tokens/s"] == ["50", "50"]
    assert table["hardware"][0].startswith("cpu")
    assert all(cell.endswith(("MiB", "GiB")) for cell in table["peak memory"])
    assert all(table["wall time"])


def test_each_eval_set_gets_a_row_with_the_newest_score_and_its_interval(tmp_path):
    a = trained(tmp_path, "caps-lora", 1, history([4.0, 3.0], {}))
    b = trained(tmp_path, "caps-lora", 2, history([4.0, 2.0], {}))
    a = with_evaluations(
        a,
        evaluation("caps-lora@1", "heldout@1", 0.8),  # newest first
        evaluation("caps-lora@1", "heldout@1", 0.3),
        evaluation("caps-lora@1", "format@2", 0.5),
    )
    b = with_evaluations(b, evaluation("caps-lora@2", "heldout@1", 0.9))
    comparison = build_comparison([a, b])
    table = rows(comparison)
    assert table["eval heldout@1"] == ["0.800 [0.700, 0.850]", "0.900 [0.800, 0.950]"]
    assert table["eval format@2"] == ["0.500 [0.400, 0.550]", "-"]
    assert not comparison.notes


def test_scores_on_other_eval_set_versions_or_graders_are_marked(tmp_path):
    a = with_evaluations(
        trained(tmp_path, "caps-lora", 1, history([4.0, 3.0], {})),
        evaluation("caps-lora@1", "heldout@1", 0.8),
    )
    b = with_evaluations(
        trained(tmp_path, "caps-lora", 2, history([4.0, 2.0], {})),
        evaluation("caps-lora@2", "heldout@2", 0.9, graders="g2"),
    )
    comparison = build_comparison([a, b])
    cells = rows(comparison)["eval heldout"]
    assert cells[0].startswith("0.800") and "heldout@1" in cells[0]
    assert "heldout@2" in cells[1] and "g2g2g2g2" in cells[1]
    assert any("different eval-set versions or graders" in n for n in comparison.notes)


def test_a_version_without_report_is_shown_from_its_lineage(tmp_path):
    a = trained(tmp_path, "caps-lora", 1, history([4.0, 3.0], {}))
    bare = Experiment(
        "adapter",
        registry_pb2.ArtifactVersion(
            name="hand-made",
            version=1,
            lineage=registry_pb2.Lineage(
                base_model="smollm2-135m-instruct@1", metrics={"train_loss": 0.7}
            ),
        ),
    )
    comparison = build_comparison([a, bare])
    table = rows(comparison)
    assert table["final train loss"] == ["3.0000", "0.7000"]
    assert table["best loss"][1] == ""
    assert any("hand-made@1 has no training_report.json" in n for n in comparison.notes)


def test_table_renders_and_plot_overlays_the_curves(tmp_path):
    a = trained(tmp_path, "caps-lora", 1, history([4.0, 3.0, 2.0], {3: 2.5}), lora_r=8)
    b = trained(tmp_path, "caps-lora", 2, history([4.0, 2.0], {}), lora_r=16)
    bare = Experiment("adapter", registry_pb2.ArtifactVersion(name="hand-made", version=1))
    console = Console(record=True, width=160)
    console.print(comparison_table(build_comparison([a, b, bare])))
    text = console.export_text()
    assert "caps-lora@2" in text and "hand-made@1" in text and "lora_r" in text
    assert "same for all: " in text and "batch_size=8" in text
    assert "hand-made@1 records no hyper-parameters" in text
    png = tmp_path / "curves.png"
    assert plot_loss_curves([a, b, bare], png) == ["caps-lora@1", "caps-lora@2"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_job_that_published_an_earlier_checkpoint_says_which(tmp_path):
    a = trained(tmp_path, "caps-lora", 1, history([4.0, 3.0, 2.0], {}))
    report = record_checkpoint_choice(
        tmp_path / "caps-lora-1",
        step=2,
        score=0.75,
        because="best of 3 checkpoints on heldout@1 by score",
        scores=[{"step": 1, "score": 0.5}, {"step": 2, "score": 0.75}, {"step": 3, "score": 0.7}],
    )
    a = Experiment(a.kind, a.version, a.dataset, report)
    table = rows(build_comparison([a]))
    assert table["published weights"] == ["step 2 (best of 3 checkpoints on heldout@1 by score)"]
