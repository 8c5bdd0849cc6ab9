"""Methods ia3, loha and lokr in the training spec: what each reads, what is refused and why
(with the setting to change), the PEFT config a job trains with, and the memory estimate's
parameter counts against PEFT's own (counted on SmolLM2-135M with PEFT 0.21)."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.stubs import trainer_pb2
from services.common.training_spec_proto import config_from_values, config_to_proto
from services.trainer.device import DeviceInfo
from services.trainer.memory import GIB, ModelShape, estimate_memory
from services.trainer.recipes.common import peft_config
from services.trainer.service import memory_response
from services.trainer.spec import TrainingConfig, training_config_from_proto
from tests.helpers.admission_registry import SMOLLM2_CONFIG

CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * GIB, name="cpu")
GPUS = DeviceInfo(cuda=True, gpu_count=4, memory_bytes=80 * GIB, name="cuda")
SMOLLM2 = ModelShape.from_config(SMOLLM2_CONFIG)
NAMES = {"base_model": "m", "dataset": "d", "output_name": "o"}


def spec(method: trainer_pb2.Method, **lora) -> trainer_pb2.TrainingSpec:
    return trainer_pb2.TrainingSpec(
        base_model="smollm2-135m-instruct",
        dataset="chats",
        output_name="out",
        method=method,
        lora=trainer_pb2.LoraConfig(**lora),
    )


def refusal(**values) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        config_from_values({**NAMES, **values})
    return caught.value


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (trainer_pb2.METHOD_IA3, "ia3"),
        (trainer_pb2.METHOD_LOHA, "loha"),
        (trainer_pb2.METHOD_LOKR, "lokr"),
    ],
)
def test_each_method_on_the_wire_is_an_adapter_job_that_round_trips(number, name):
    config = training_config_from_proto(spec(number), CPU)
    assert config.method == name
    assert config.is_adapter and config.output_kind == "adapter"
    assert config.learning_rate == 2e-4
    # What GetJob shows back can be sent again as it is.
    shown = config_to_proto(config)
    assert shown.method == number
    assert training_config_from_proto(shown, CPU) == config


def test_ia3_targets_pefts_modules_by_default_and_shows_no_rank():
    config = training_config_from_proto(spec(trainer_pb2.METHOD_IA3), CPU)
    assert config.target_modules == ("k_proj", "v_proj", "down_proj")
    shown = config_to_proto(config)
    assert list(shown.lora.target_modules) == ["k_proj", "v_proj", "down_proj"]
    assert shown.lora.r == 0 and shown.lora.alpha == 0 and not shown.lora.HasField("dropout")


def test_loha_and_lokr_read_rank_alpha_and_dropout():
    config = training_config_from_proto(
        spec(trainer_pb2.METHOD_LOKR, r=4, dropout=0.1, target_modules=["q_proj"]), CPU
    )
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (4, 8.0, 0.1)
    assert config.target_modules == ("q_proj",)


@pytest.mark.parametrize(
    ("setting", "value", "param"),
    [
        ("lora_r", 8, "training.lora.r"),
        ("lora_alpha", 16.0, "training.lora.alpha"),
        ("lora_dropout", 0.0, "training.lora.dropout"),  # 0 is a value: dropout has presence
        ("use_rslora", True, "training.lora.use_rslora"),
        ("loraplus_lr_ratio", 16.0, "training.lora.loraplus_lr_ratio"),
    ],
)
def test_ia3_refuses_what_it_does_not_read(setting, value, param):
    error = refusal(method="ia3", **{setting: value})
    assert error.param == param
    assert f"{param} does not apply to method ia3" in error.message
    assert "one scaling vector per module" in error.message and "drop it" in error.message


def test_ia3_refuses_a_rank_set_on_the_wire():
    with pytest.raises(InvalidArgument, match="training.lora.r does not apply to method ia3"):
        training_config_from_proto(spec(trainer_pb2.METHOD_IA3, r=8), CPU)


@pytest.mark.parametrize("method", ["loha", "lokr"])
@pytest.mark.parametrize(
    ("setting", "value", "param"),
    [
        ("use_rslora", True, "training.lora.use_rslora"),
        ("loraplus_lr_ratio", 16.0, "training.lora.loraplus_lr_ratio"),
    ],
)
def test_loha_and_lokr_refuse_the_lora_only_switches(method, setting, value, param):
    error = refusal(method=method, **{setting: value})
    assert error.param == param
    assert error.message == (
        f"{param} does not apply to method {method} ({method} has no LoRA A and B matrices); "
        "drop it"
    )


def test_a_config_written_by_hand_is_refused_too():
    """A recipe's JSON config never passes the wire's check of what was set: the switches'
    non-default values are refused by the config itself."""
    with pytest.raises(InvalidArgument, match="use_rslora does not apply to method loha"):
        TrainingConfig(**NAMES, method="loha", use_rslora=True)


@pytest.mark.parametrize("method", ["ia3", "loha", "lokr"])
def test_zero3_is_refused_and_zero2_taken(method):
    error = refusal(method=method, num_gpus=4, zero_stage=3)
    assert error.param == "training.zero_stage"
    assert f"{method} with ZeRO-3 is not supported here" in error.message
    assert "use zero_stage 2" in error.message
    assert config_from_values({**NAMES, "method": method, "num_gpus": 4}).zero_stage == 2


def test_ia3_feedforward_modules_are_the_targeted_mlp_modules():
    def ia3(*targets: str):
        return peft_config(config_from_values({**NAMES, "method": "ia3", **_targets(targets)}))

    default = ia3()
    assert set(default.target_modules) == {"k_proj", "v_proj", "down_proj"}
    assert default.feedforward_modules == {"down_proj"}
    # No feed-forward module among the targets: none scaled at its input (PEFT's subset rule).
    assert ia3("q_proj", "v_proj").feedforward_modules == set()
    assert ia3("up_proj", "o_proj").feedforward_modules == {"up_proj"}
    every = ia3("all-linear")
    assert every.target_modules == "all-linear"
    assert set(every.feedforward_modules) == {"gate_proj", "up_proj", "down_proj"}


def _targets(targets: tuple[str, ...]) -> dict:
    return {"target_modules": targets} if targets else {}


@pytest.mark.parametrize(("method", "kind"), [("loha", "LOHA"), ("lokr", "LOKR")])
def test_loha_and_lokr_configs_take_the_spec_rank_scale_and_dropout(method, kind):
    config = config_from_values(
        {**NAMES, "method": method, "lora_r": 4, "lora_alpha": 12.0, "lora_dropout": 0.1}
    )
    built = peft_config(config)
    assert built.peft_type.value == kind
    assert (built.r, built.alpha, built.rank_dropout, built.module_dropout) == (4, 12.0, 0.1, 0)
    assert built.target_modules == "all-linear"


# Trainable parameters PEFT 0.21 makes on SmolLM2-135M (get_peft_model on the real model,
# counted with requires_grad), and the specs that made them.
PEFT_COUNTS = [
    ({"method": "ia3"}, 57_600),  # 30 x (192 + 192 + 1536)
    ({"method": "ia3", "target_modules": ("all-linear",)}, 126_720),
    ({"method": "loha"}, 9_768_960),  # 30 x 2 x 16 x (sum of in + out)
    ({"method": "lokr"}, 282_240),
    ({"method": "lokr", "lora_r": 64}, 282_240),  # every w2 full already
    ({"method": "lokr", "lora_r": 4, "target_modules": ("q_proj", "down_proj")}, 54_720),
]


@pytest.mark.parametrize(("values", "peft_count"), PEFT_COUNTS)
def test_the_estimate_counts_the_parameters_peft_trains(values, peft_count):
    config = config_from_values({**NAMES, **values})
    states = dict(estimate_memory(config, SMOLLM2, CPU).terms)
    assert states["trainable_weights_gradients_optimizer"] == 16 * peft_count


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_loha_and_lokr_count_the_weight_updates_they_keep(method):
    plain = config_from_values({**NAMES, "method": method})
    kept = dict(estimate_memory(plain, SMOLLM2, CPU).terms)["adapter_weight_updates"]
    assert kept == 30 * SMOLLM2.weight_update_params(("all-linear",)) * 4  # every layer's, fp32
    checkpointed = plain.model_copy(update={"gradient_checkpointing": True})
    one_layer = dict(estimate_memory(checkpointed, SMOLLM2, CPU).terms)["adapter_weight_updates"]
    assert one_layer * 30 == kept
    lora = dict(estimate_memory(config_from_values(NAMES), SMOLLM2, CPU).terms)
    assert "adapter_weight_updates" not in lora


@pytest.mark.parametrize("method", ["ia3", "loha", "lokr"])
def test_the_test_sized_job_fits_and_the_largest_does_not(method):
    small = config_from_values(
        {**NAMES, "method": method, "batch_size": 2, "max_seq_length": 128, "max_steps": 2}
    )
    assert estimate_memory(small, SMOLLM2, CPU).fits
    huge = small.model_copy(
        update={"batch_size": 65536, "max_seq_length": 1_048_576, "num_gpus": 4, "zero_stage": 2}
    )
    est = estimate_memory(huge, SMOLLM2, GPUS)
    assert not est.fits
    assert memory_response(est).peak_bytes == est.peak_bytes < 2**63  # EstimateJobMemory
