"""Method dpo for real: a DPO job on SmolLM2-135M on the CPU through the trainer's gRPC API and
the real registry, on a small preference set whose preferred answers are SQL and whose
non-preferred ones are prose. One short job (6 steps of 2 pairs) carries every assertion,
because each training run costs CPU minutes on the shared 2-core machines:

- the reward margin and accuracy are reported (events, job metrics, the published report), and
  the margin rises: the adapter comes to prefer the preferred answers over the reference;
- the adapter is published with its lineage and the job's labels, and with
  ``publish_checkpoints`` each checkpoint too, as ``<output_name>-step-<N>``, listed by the
  registry with the labels and its step, holding the adapter alone;
- the memory estimate of the job is above what it measured.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from services.common.stubs import trainer_pb2
from tests.helpers.sample_data import write_jsonl
from tests.helpers.trainer_process import start_trainer, wait_for_final

pytestmark = pytest.mark.integration

STEPS = 6
SAVE_EVERY = 3
LABELS = {"tuneplex.owner": "team-dpo", "openai.suffix": "sql"}
TABLES = ["orders", "customers", "products", "invoices"]


def preference_pairs() -> list[dict]:
    """16 pairs: a question about a table, a SQL answer preferred to a prose one."""
    pairs = []
    for i in range(16):
        table = TABLES[i % len(TABLES)]
        column = ["id", "name", "price", "total"][i // len(TABLES)]
        pairs.append(
            {
                "input": {
                    "messages": [
                        {"role": "system", "content": "You answer with one SQL query."},
                        {"role": "user", "content": f"List every {column} in {table}."},
                    ]
                },
                "preferred_output": [
                    {"role": "assistant", "content": f"SELECT {column} FROM {table};"}
                ],
                "non_preferred_output": [
                    {"role": "assistant", "content": f"I think the {table} have some {column}s."}
                ],
            }
        )
    return pairs


@pytest.fixture(scope="module")
def trainer(registry_with_base_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("dpo-data")
    with RegistryClient(registry_with_base_model.target) as client:
        client.push("dataset", "dpo-sql-pairs", write_jsonl(preference_pairs(), data / "p.jsonl"))
    server = start_trainer(tmp_path_factory.mktemp("dpo-trainer"), registry_with_base_model.target)
    try:
        yield server
    finally:
        server.stop()


def dpo_spec() -> trainer_pb2.TrainingSpec:
    return trainer_pb2.TrainingSpec(
        base_model="smollm2-135m-instruct",
        dataset="dpo-sql-pairs",
        output_name="dpo-sql",
        method=trainer_pb2.METHOD_DPO,
        publish_checkpoints=True,
        lora=trainer_pb2.LoraConfig(r=8, dropout=0.0),
        hyperparameters=trainer_pb2.Hyperparameters(
            max_steps=STEPS,
            batch_size=2,
            max_seq_length=128,
            learning_rate=1e-3,
            warmup_ratio=0.0,
            save_steps=SAVE_EVERY,
            dpo_beta=0.1,
        ),
    )


def test_dpo_job_raises_the_reward_margin_and_publishes_its_checkpoints(
    trainer, registry_with_base_model, tmp_path
):
    client = TrainerClient(trainer.target)
    job = client.create_job(dpo_spec(), labels=LABELS)
    job = wait_for_final(client, job.id, timeout=600)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job

    # The margin and accuracy, step by step, as the events carry them.
    events = list(client.stream_events(job.id))
    rewards = [e.eval for e in events if e.WhichOneof("kind") == "eval"]
    margins = {r.step: r.metrics["reward_margin"] for r in rewards if "reward_margin" in r.metrics}
    print("reward margins", margins)
    assert sorted(margins) == list(range(1, STEPS + 1))
    assert margins[1] == pytest.approx(0.0, abs=1e-4)  # the adapter starts as the reference
    assert margins[STEPS] > 0.5 and margins[STEPS] > max(margins[s] for s in (1, 2))
    assert all("reward_accuracy" in r.metrics for r in rewards)
    metrics = job.metrics
    assert metrics["reward_margin"] == pytest.approx(margins[STEPS], rel=1e-4)
    assert metrics["reward_margin"] > metrics["first_reward_margin"]
    assert metrics["reward_accuracy"] >= 0.5
    # The estimate sizes 2 sequences a pair and the reference pass: it is above the peak.
    assert job.estimated_peak_memory_bytes > metrics["peak_memory_bytes"] > 0

    with RegistryClient(registry_with_base_model.target) as registry:
        output = registry.pull("adapter", job.output, tmp_path / "adapter")
        assert job.output == "dpo-sql@1"
        assert output.lineage.job_id == job.id
        assert output.lineage.dataset == "dpo-sql-pairs@1"
        assert dict(output.labels) == LABELS
        # One adapter: the reference is the base with it disabled, no copy of it ("ref").
        assert not (tmp_path / "adapter" / "ref").exists()
        report = json.loads((tmp_path / "adapter" / "training_report.json").read_text())
        assert report["method"] == "dpo" and report["hyperparameters"]["dpo_beta"] == 0.1
        assert report["metrics"]["reward_margin"] == pytest.approx(metrics["reward_margin"])

        published = {c.step: c.published for c in client.list_checkpoints(job.id)}
        assert published == {3: "dpo-sql-step-3@1", 6: "dpo-sql-step-6@1"}
        listed = registry.list("adapter", labels=LABELS)
        by_name = {a.name: a.latest for a in listed}
        assert set(by_name) == {"dpo-sql", "dpo-sql-step-3", "dpo-sql-step-6"}
        for step in (SAVE_EVERY, STEPS):
            version = by_name[f"dpo-sql-step-{step}"]
            assert dict(version.labels) == {**LABELS, "tuneplex.checkpoint_step": str(step)}
            assert version.lineage.job_id == job.id
            assert version.lineage.base_model == "smollm2-135m-instruct@1"
            assert version.lineage.metrics["step"] == step
            assert "reward_margin" in version.lineage.metrics
            assert sorted(f.path for f in version.manifest.files) == [
                "adapter_config.json",
                "adapter_model.safetensors",
            ]
        # The session's registry holds other jobs' checkpoints too: this job's labels pick it.
        only_step_3 = registry.list(
            "adapter", labels={**LABELS, "tuneplex.checkpoint_step": "3"}
        )
        assert [a.name for a in only_step_3] == ["dpo-sql-step-3"]
        registry.pull("adapter", "dpo-sql-step-6", tmp_path / "step-6")
    # The last checkpoint holds the published weights.
    last = load_file(tmp_path / "step-6" / "adapter_model.safetensors")
    final = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert last.keys() == final.keys() and last
    assert all(torch.equal(last[k], final[k]) for k in final)
    client.close()
