"""Method dpo before any training: its settings and their bounds, the rules that tie it to a
preference dataset (and every other method away from one), the checkpoint names
``publish_checkpoints`` will need, its memory estimate, the preference lines as TRL's
conversational rows, and what a published checkpoint carries."""

from __future__ import annotations

import json

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.stubs import trainer_pb2
from services.trainer.admission import Admission
from services.trainer.device import DeviceInfo
from services.trainer.memory import GIB, ModelShape, estimate_memory
from services.trainer.recipes.dpo import preference_row
from services.trainer.recipes.report import final_metrics
from services.trainer.spec import training_config_from_proto, training_config_to_proto
from services.trainer.worker.publish import checkpoint_adapter_folder, checkpoint_metrics
from tests.helpers.admission_registry import SMOLLM2_CONFIG, RegistryAtVersionOne

CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * GIB, name="cpu")
H = "training.hyperparameters."


def spec(**fields) -> trainer_pb2.TrainingSpec:
    hp = fields.pop("hp", {})
    base = dict(
        base_model="smollm2-135m-instruct",
        dataset="shop-sql-pairs",
        output_name="sql-dpo",
        method=trainer_pb2.METHOD_DPO,
    )
    base.update(fields)
    return trainer_pb2.TrainingSpec(**base, hyperparameters=trainer_pb2.Hyperparameters(**hp))


def config(**fields):
    return training_config_from_proto(spec(**fields), CPU)


def admit(**fields):
    admission = Admission(RegistryAtVersionOne(), CPU, "local", host_memory_bytes=24 * GIB)
    fields["hp"] = {"batch_size": 2, **fields.get("hp", {})}
    return admission.admit(trainer_pb2.JobSpec(training=spec(**fields)), enforce_fit=False)


def test_dpo_trains_a_lora_adapter_with_beta_0_1_and_padded_batches_by_default():
    c = config()
    assert (c.method, c.dpo_beta, c.is_adapter, c.output_kind) == ("dpo", 0.1, True, "adapter")
    assert (c.lora_r, c.learning_rate) == (16, 2e-4)  # the lora settings apply
    assert c.padding_free is False and c.publish_checkpoints is False
    stored = training_config_to_proto(c)
    assert stored.method == trainer_pb2.METHOD_DPO
    assert stored.hyperparameters.dpo_beta == pytest.approx(0.1)
    assert training_config_from_proto(stored, CPU) == c
    assert config(hp={"dpo_beta": 10.0}).dpo_beta == 10.0


@pytest.mark.parametrize("beta", [0.0, -0.1, 10.01, float("inf"), float("nan")])
def test_beta_out_of_its_bounds_is_refused_naming_it(beta):
    with pytest.raises(InvalidArgument) as refused:
        config(hp={"dpo_beta": beta})
    assert refused.value.param == H + "dpo_beta"


@pytest.mark.parametrize(
    ("hp", "param", "says"),
    [
        ({"train_on_prompt": True}, H + "train_on_prompt", "no meaning for dpo"),
        ({"packing": True}, H + "packing", "packing does not apply to dpo"),
        ({"padding_free": True}, H + "padding_free", "not available for dpo"),
    ],
)
def test_settings_dpo_cannot_honour_are_refused(hp, param, says):
    with pytest.raises(InvalidArgument, match=says) as refused:
        config(hp=hp)
    assert refused.value.param == param


def test_publish_checkpoints_is_for_adapter_methods():
    assert config(publish_checkpoints=True).publish_checkpoints
    with pytest.raises(InvalidArgument, match="publishes adapter checkpoints") as refused:
        config(method=trainer_pb2.METHOD_FULL, publish_checkpoints=True)
    assert refused.value.param == "training.publish_checkpoints"


def test_a_dpo_job_needs_a_preference_dataset():
    assert admit().config.dataset == "shop-sql-pairs@1"
    with pytest.raises(FailedPrecondition) as refused:
        admit(dataset="shop-sql")
    error = refused.value
    assert (error.code, error.param) == ("wrong_dataset_format", "training.dataset")
    assert "trains on preference pairs" in error.message and "is a chat dataset" in error.message
    with pytest.raises(FailedPrecondition) as refused:
        admit(validation_dataset="shop-sql-val")
    assert refused.value.param == "training.validation_dataset"


@pytest.mark.parametrize("method", [trainer_pb2.METHOD_LORA, trainer_pb2.METHOD_DORA])
def test_another_method_refuses_a_preference_dataset(method):
    with pytest.raises(FailedPrecondition) as refused:
        admit(method=method)
    error = refused.value
    assert (error.code, error.param) == ("wrong_dataset_format", "training.dataset")
    assert "is a preference dataset, which only method dpo trains on" in error.message
    assert admit(method=method, dataset="shop-sql").config.method != "dpo"


def test_an_output_name_too_long_for_its_checkpoint_names_is_refused_at_admission():
    # 10 pairs, batch 2: 5 steps an epoch, 3 epochs: the last checkpoint is `-step-15`.
    fits = "n" * (63 - len("-step-15"))
    assert admit(output_name=fits, publish_checkpoints=True).config.output_name == fits
    assert admit(output_name=fits + "x").config.output_name == fits + "x"  # no checkpoints
    with pytest.raises(InvalidArgument) as refused:
        admit(output_name=fits + "x", publish_checkpoints=True)
    error = refused.value
    assert error.param == "training.output_name"
    assert "at most 55 characters" in error.message and "-step-15'" in error.message
    with pytest.raises(InvalidArgument, match="at most 53 characters"):
        admit(output_name=fits, publish_checkpoints=True, hp={"max_steps": 1000})
    with pytest.raises(InvalidArgument, match="at most 54 characters"):  # 2 per step: step 150
        admit(output_name=fits, publish_checkpoints=True, hp={"epochs": 30})


def test_dpo_memory_counts_both_answers_and_the_reference_pass():
    shape = ModelShape.from_config(SMOLLM2_CONFIG)
    dpo = estimate_memory(config(hp={"batch_size": 4}), shape, CPU)
    lora = training_config_from_proto(
        spec(method=trainer_pb2.METHOD_LORA, hp={"batch_size": 4}), CPU
    ).model_copy(update={"padding_free": False})
    same_batch = dict(estimate_memory(lora, shape, CPU).terms)
    pairs_as_sequences = dict(estimate_memory(lora, shape, CPU, batch=8).terms)
    terms = dict(dpo.terms)
    assert terms["activations"] == pairs_as_sequences["activations"] > same_batch["activations"]
    assert terms["logits"] == pairs_as_sequences["logits"]
    assert terms["base_weights"] == same_batch["base_weights"]  # no second copy of the weights
    assert 0 < terms["reference_forward"] < terms["activations"]


def test_a_preference_line_becomes_trl_conversational_row():
    line = {
        "input": {
            "messages": [
                {"role": "system", "content": "Answer in SQL."},
                {"role": "user", "content": "How many orders?"},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "SELECT COUNT(*) FROM orders;"}],
        "non_preferred_output": [{"role": "assistant", "content": "There are many."}],
    }
    assert preference_row(line, 1) == {
        "prompt": line["input"]["messages"],
        "chosen": line["preferred_output"],
        "rejected": line["non_preferred_output"],
    }


GOOD_OUTPUT = [{"role": "assistant", "content": "SELECT 1;"}]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ({"input": {"text": "q"}, "preferred_output": GOOD_OUTPUT}, 'no "input"'),
        (
            {"input": {"messages": [{"role": "assistant", "content": "hi"}]}},
            "must end with a user message",
        ),
        ({"non_preferred_output": GOOD_OUTPUT}, "preferred_output must be a list of exactly one"),
        (
            {"preferred_output": GOOD_OUTPUT, "non_preferred_output": GOOD_OUTPUT * 2},
            "non_preferred_output must be a list of exactly one",
        ),
        (
            {
                "preferred_output": GOOD_OUTPUT,
                "non_preferred_output": [{"role": "user", "content": "x"}],
            },
            "must have role 'assistant'",
        ),
        (
            {"preferred_output": GOOD_OUTPUT, "non_preferred_output": GOOD_OUTPUT},
            "are the same text",
        ),
    ],
)
def test_a_broken_preference_line_is_refused_with_its_number(line, says):
    line = {"input": {"messages": [{"role": "user", "content": "q"}]}, **line}
    with pytest.raises(InvalidArgument, match=says) as refused:
        preference_row(line, 7, "training.validation_dataset")
    assert "example 7" in refused.value.message
    assert (refused.value.param, refused.value.code) == (
        "training.validation_dataset",
        "dataset_invalid",
    )


class TrainOutput:
    training_loss = 0.6


def test_the_report_names_reward_accuracy_and_margin_first_last_and_on_validation():
    history = [
        {"step": 1, "loss": 0.69, "rewards/accuracies": 0.0, "rewards/margins": 0.0},
        {"step": 2, "loss": 0.5, "rewards/accuracies": 0.75, "rewards/margins": 0.4},
        {"step": 2, "eval_loss": 0.55, "eval_rewards/accuracies": 1.0, "eval_rewards/margins": 0.3},
    ]
    metrics = final_metrics(history, TrainOutput())
    assert metrics["first_reward_accuracy"] == 0.0 and metrics["reward_accuracy"] == 0.75
    assert metrics["first_reward_margin"] == 0.0 and metrics["reward_margin"] == 0.4
    assert (metrics["eval_reward_accuracy"], metrics["eval_reward_margin"]) == (1.0, 0.3)
    assert "reward_margin" not in final_metrics([{"step": 1, "loss": 1.0}], TrainOutput())  # SFT


def test_a_published_checkpoint_is_its_adapter_alone_with_the_metrics_of_its_step(tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/cache/models/abc", "r": 8})
    )
    (checkpoint / "adapter_model.safetensors").write_bytes(b"weights")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        (checkpoint / name).write_bytes(b"state")
    state = {
        "global_step": 4,
        "log_history": [
            {"step": 3, "loss": 0.9, "rewards/margins": 0.1},
            {"step": 4, "loss": 0.4, "rewards/margins": 0.7, "rewards/accuracies": 1.0},
            {"step": 4, "eval_loss": 0.5, "eval_rewards/margins": 0.6},
        ],
    }
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    assert checkpoint_metrics(checkpoint) == {
        "step": 4.0,
        "train_loss": 0.4,
        "reward_margin": 0.7,
        "reward_accuracy": 1.0,
        "eval_loss": 0.5,
        "eval_reward_margin": 0.6,
    }
    folder = checkpoint_adapter_folder(checkpoint, tmp_path / "out", "smollm2-135m-instruct@1")
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved == {"base_model_name_or_path": "smollm2-135m-instruct@1", "r": 8}
