"""A training job that evaluates itself, through the trainer's gRPC API with the real registry:
a tiny LoRA job on SmolLM2-135M (CPU) scores each of its checkpoints on an eval set, publishes
the best, records the published version's EVALUATION, and promotes it to `prod` through the
registry's gate.

The data teaches one thing a grader can see: every answer starts with ``CAPITAL:``. The base
model never writes it and six steps teach it, so the format grader alone gives the best
checkpoint at least 0.5; a second grader (the right capital) tells trained checkpoints apart.
What the test pins: the published weights are the best of the ones scored (ties: the later
step), and score what the EVALUATION record and the job's metrics say.
"""

from __future__ import annotations

import json

import pytest

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from services.common.errors import FailedPrecondition
from services.common.eval_summary import SUMMARY_FILE
from services.common.stubs import trainer_pb2
from services.common.training_spec_proto import spec_from_values
from tests.helpers.sample_data import CAPITALS, chat_examples, write_jsonl
from tests.helpers.trainer_process import start_trainer, wait_for_final

pytestmark = pytest.mark.integration

BASE = "smollm2-135m-instruct"
EVAL_SET = "train-eval-caps"
OUTPUT = "train-eval-lora"
STEPS = 6
SAVE_EVERY = 2
NUM_ITEMS = 6
FORMAT = {
    "type": "regex",
    "name": "format",
    "input": "{{sample.output_text}}",
    "pattern": "^\\s*CAPITAL:",
}
# Whether the answer names the right capital: what tells the checkpoints apart once the format
# is learned (and may make an earlier one the best).
RIGHT = {
    "type": "string_check",
    "name": "capital",
    "input": "{{sample.output_text}}",
    "reference": "{{item.capital}}",
    "operation": "ilike",
}
JOB_TIMEOUT_S = 900


def eval_items() -> list[dict]:
    return [
        {"input": f"What is the capital of {country}?", "capital": capital.upper()}
        for country, capital in CAPITALS[:NUM_ITEMS]
    ]


@pytest.fixture(scope="module")
def stack(registry_with_base_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("train-eval-data")
    with RegistryClient(registry_with_base_model.target) as client:
        client.push("dataset", "train-eval-chat", write_jsonl(chat_examples(32), data / "c.jsonl"))
        client.push("dataset", EVAL_SET, write_jsonl(eval_items(), data / "eval.jsonl"))
        unlabelled = [{"input": i["input"]} for i in eval_items()]  # no `capital` to compare
        client.push("dataset", "train-eval-unlabelled", write_jsonl(unlabelled, data / "u.jsonl"))
    # No gateway listens there: the published version is scored in the worker too.
    trainer = start_trainer(
        tmp_path_factory.mktemp("train-eval-trainer"),
        registry_with_base_model.target,
        env={"TUNEPLEX_TRAINER_GATEWAY_URL": "http://127.0.0.1:9"},
    )
    try:
        yield registry_with_base_model, trainer
    finally:
        trainer.stop()


def job_spec(eval_set: str, output: str = OUTPUT) -> trainer_pb2.TrainingSpec:
    return spec_from_values(
        dict(
            base_model=BASE,
            dataset="train-eval-chat",
            output_name=output,
            lora_r=8,
            max_steps=STEPS,
            save_steps=SAVE_EVERY,
            batch_size=4,
            max_seq_length=64,
            learning_rate=3e-3,
            evaluation=dict(
                eval_set=eval_set,
                graders=[FORMAT, RIGHT],
                max_tokens=8,
                each_checkpoint=True,
                promote_alias="prod",
            ),
        )
    )


def test_an_eval_set_the_graders_cannot_score_fails_the_job_before_training(stack):
    registry, trainer = stack
    with TrainerClient(trainer.target) as client:
        with pytest.raises(FailedPrecondition) as refused:  # a chat dataset is not an eval set
            client.create_job(job_spec("train-eval-chat", "train-eval-never"))
        assert refused.value.param == "training.evaluation.eval_set"
        assert refused.value.code == "not_an_eval_set"

        job = client.create_job(job_spec("train-eval-unlabelled", "train-eval-never"))
        job = wait_for_final(client, job.id, JOB_TIMEOUT_S)
        events = list(client.stream_events(job.id))
    assert job.state == trainer_pb2.JOB_STATE_FAILED, job
    assert job.error.code == "template_field_missing"
    assert job.error.param == "training.evaluation.eval_set"
    assert "item 1" in job.error.message and "capital" in job.error.message
    assert not any(e.WhichOneof("kind") == "progress" for e in events), "no step was trained"
    with RegistryClient(registry.target) as client:
        assert all(a.name != "train-eval-never" for a in client.list("adapter"))


def test_a_job_publishes_its_best_checkpoint_records_its_score_and_promotes_it(stack, tmp_path):
    registry, trainer = stack
    spec = job_spec(EVAL_SET)
    with TrainerClient(trainer.target) as client:
        job = client.create_job(spec)
        assert job.spec.training.evaluation.eval_set == f"{EVAL_SET}@1"  # pinned at admission
        job = wait_for_final(client, job.id, JOB_TIMEOUT_S)
        logs = [
            e.log.message for e in client.stream_events(job.id) if e.WhichOneof("kind") == "log"
        ]
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, (job, trainer.log()[-4000:])
    assert job.output == f"{OUTPUT}@1"

    with RegistryClient(registry.target) as client:
        client.pull("adapter", job.output, tmp_path / "adapter")
        report = json.loads((tmp_path / "adapter" / "training_report.json").read_text())
        # Checkpoints at steps 2 and 4, and the final weights (step 6).
        scores = {int(c["step"]): c["score"] for c in report["checkpoint_scores"]}
        assert sorted(scores) == [2, 4, 6]
        best = max(scores.values())
        assert report["published_score"] == best
        assert report["published_step"] == max(s for s, v in scores.items() if v == best)
        assert report["published_because"] == f"best of 3 checkpoints on {EVAL_SET}@1 by score"
        assert best >= 0.5, "six steps teach the answer format (the base model never writes it)"
        adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == f"{BASE}@1"  # no worker path
        published = client.resolve("adapter", job.output)
        assert published.lineage.metrics["published_step"] == report["published_step"]

        (evaluation,) = client.evaluations("adapter", job.output, f"{EVAL_SET}@1")
        assert evaluation.lineage.job_id == job.id
        client.pull("evaluation", f"{evaluation.name}@{evaluation.version}", tmp_path / "ev")
        summary = json.loads((tmp_path / "ev" / SUMMARY_FILE).read_text())
        assert summary["model"] == job.output and summary["backend"] == "local"
        assert summary["num_items"] == NUM_ITEMS
        # The same weights, greedy, the same items: the score the checkpoint got.
        assert summary["score"] == pytest.approx(best)
        assert job.metrics["eval_score"] == pytest.approx(best)
        assert job.metrics["eval_ci_low"] <= best <= job.metrics["eval_ci_high"]
        assert "train_loss" in job.metrics  # the training metrics stay beside the evaluation

        assert job.metrics["promoted"] == 1.0
        assert client.get("adapter", OUTPUT).aliases["prod"] == 1
    assert any(f"promoted {OUTPUT}@1 to {OUTPUT}@prod" in m for m in logs), logs
