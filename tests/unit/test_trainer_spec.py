"""TrainingSpec validation: defaults applied, and each bad field refused with the fix and the
field's name."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.stubs import trainer_pb2
from services.trainer.device import DeviceInfo
from services.trainer.spec import training_config_from_proto, training_config_to_proto

CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * 2**30, name="cpu")
GPU = DeviceInfo(cuda=True, gpu_count=1, memory_bytes=80 * 2**30, name="cuda:H100")
H = "training.hyperparameters."


def spec(**fields) -> trainer_pb2.TrainingSpec:
    hp = fields.pop("hp", {})
    lora = fields.pop("lora", {})
    base = dict(base_model="smollm2-135m-instruct", dataset="shop-sql@1", output_name="sql-lora")
    base.update(fields)
    return trainer_pb2.TrainingSpec(
        **base,
        lora=trainer_pb2.LoraConfig(**lora),
        hyperparameters=trainer_pb2.Hyperparameters(**hp),
    )


def test_defaults_are_applied():
    c = training_config_from_proto(spec(), CPU)
    assert (c.method, c.lora_r, c.lora_alpha, c.lora_dropout) == ("lora", 16, 32.0, 0.05)
    assert c.target_modules == ("all-linear",)
    assert (c.learning_rate, c.epochs, c.batch_size, c.max_seq_length) == (2e-4, 3.0, 8, 512)
    assert (c.save_steps, c.seed, c.warmup_ratio, c.precision) == (50, 42, 0.03, "fp32")
    assert training_config_from_proto(spec(), GPU).precision == "bf16"
    amx = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * 2**30, name="cpu", cpu_bf16=True)
    assert training_config_from_proto(spec(), amx).precision == "bf16"  # native bf16 CPU
    assert c.padding_free and not c.gradient_checkpointing
    padded = training_config_from_proto(spec(hp={"padding_free": False}), CPU)
    assert not padded.padding_free  # an explicit false is kept (the field has presence)
    full = training_config_from_proto(spec(method=trainer_pb2.METHOD_FULL), CPU)
    assert full.learning_rate == 2e-5 and full.output_kind == "model"


def test_explicit_zero_dropout_and_seed_are_kept():
    c = training_config_from_proto(spec(lora=dict(dropout=0.0), hp=dict(seed=0)), CPU)
    assert c.lora_dropout == 0.0 and c.seed == 0


def test_round_trip_through_the_proto_keeps_the_config():
    c = training_config_from_proto(
        spec(lora=dict(r=8, use_rslora=True), hp=dict(packing=True)), CPU
    )
    again = training_config_from_proto(training_config_to_proto(c), CPU)
    assert again == c


@pytest.mark.parametrize(
    ("fields", "error", "param", "says"),
    [
        (dict(output_name=""), InvalidArgument, "training.output_name", "required"),
        (dict(output_name="Sql Lora"), InvalidArgument, "training.output_name", "lowercase"),
        (dict(dataset="../etc/passwd"), InvalidArgument, "training.dataset", "name@version"),
        (dict(base_model="a" * 70), InvalidArgument, "training.base_model", "63 characters"),
        (dict(lora=dict(r=5000)), InvalidArgument, "training.lora.r", "1..1024"),
        (dict(lora=dict(dropout=1.5)), InvalidArgument, "training.lora.dropout", "[0, 1)"),
        (
            dict(lora=dict(target_modules=["peft.tuners:evil"])),
            InvalidArgument,
            "training.lora.target_modules",
            "q_proj",
        ),
        (
            dict(lora=dict(loraplus_lr_ratio=0.5)),
            InvalidArgument,
            "training.lora.loraplus_lr_ratio",
            ">= 1",
        ),
        (
            dict(method=trainer_pb2.METHOD_FULL, lora=dict(r=8)),
            InvalidArgument,
            "training.lora",
            "drop them",
        ),
        (dict(hp=dict(batch_size=-2)), InvalidArgument, H + "batch_size", ">= 1"),
        (dict(hp=dict(learning_rate=3.0)), InvalidArgument, H + "learning_rate", "(0, 1]"),
        (dict(hp=dict(epochs=-1)), InvalidArgument, H + "epochs", "(0, 100]"),
        (dict(hp=dict(max_seq_length=8)), InvalidArgument, H + "max_seq_length", "16.."),
        (dict(hp=dict(warmup_ratio=1.0)), InvalidArgument, H + "warmup_ratio", "[0, 1)"),
        (
            dict(hp=dict(eval_steps=10)),
            InvalidArgument,
            "training.validation_dataset",
            "need a validation_dataset",
        ),
        (
            dict(hp=dict(early_stopping_patience=2)),
            InvalidArgument,
            "training.validation_dataset",
            "need a validation_dataset",
        ),
        (
            dict(method=trainer_pb2.METHOD_CONTINUED_PRETRAINING, hp=dict(train_on_prompt=True)),
            InvalidArgument,
            H + "train_on_prompt",
            "drop it",
        ),
        (
            dict(method=trainer_pb2.METHOD_QLORA),
            FailedPrecondition,
            "training.method",
            "use method lora on CPU",
        ),
        (
            dict(hp=dict(precision=trainer_pb2.PRECISION_FP16)),
            FailedPrecondition,
            H + "precision",
            "use precision fp32",
        ),
        (
            dict(hp=dict(precision=trainer_pb2.PRECISION_BF16)),
            FailedPrecondition,
            H + "precision",
            "use precision fp32",
        ),
        (dict(num_gpus=2), FailedPrecondition, "training.num_gpus", "set num_gpus to 0"),
        (dict(zero_stage=3), InvalidArgument, "training.zero_stage", "num_gpus > 1"),
    ],
)
def test_bad_fields_are_refused_with_the_fix(fields, error, param, says):
    with pytest.raises(error) as caught:
        training_config_from_proto(spec(**fields), CPU)
    assert caught.value.param == param
    assert says in caught.value.message


def test_gpu_only_settings_pass_on_a_gpu():
    c = training_config_from_proto(spec(method=trainer_pb2.METHOD_QLORA, num_gpus=1), GPU)
    assert c.method == "qlora" and c.precision == "bf16"
    with pytest.raises(FailedPrecondition, match="has 1; lower num_gpus"):
        training_config_from_proto(spec(num_gpus=4), GPU)
    two = DeviceInfo(cuda=True, gpu_count=2, memory_bytes=80 * 2**30, name="cuda")
    assert training_config_from_proto(spec(num_gpus=2), two).zero_stage == 2


def test_bf16_on_a_cpu_with_bf16_units_is_allowed():
    amx = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=2**34, name="cpu", cpu_bf16=True)
    c = training_config_from_proto(spec(hp=dict(precision=trainer_pb2.PRECISION_BF16)), amx)
    assert c.precision == "bf16"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (dict(lora=dict(alpha=float("inf"))), "training.lora.alpha"),
        (dict(lora=dict(loraplus_lr_ratio=float("inf"))), "training.lora.loraplus_lr_ratio"),
        (dict(hp=dict(weight_decay=float("inf"))), H + "weight_decay"),
        (dict(hp=dict(neftune_noise_alpha=float("inf"))), H + "neftune_noise_alpha"),
        (dict(hp=dict(epochs=float("inf"))), H + "epochs"),
        (dict(lora=dict(alpha=float("nan"))), "training.lora.alpha"),
        (dict(hp=dict(weight_decay=float("nan"))), H + "weight_decay"),
        (dict(hp=dict(neftune_noise_alpha=float("nan"))), H + "neftune_noise_alpha"),
        (dict(hp=dict(warmup_ratio=float("-inf"))), H + "warmup_ratio"),
    ],
)
def test_infinite_and_nan_numbers_are_refused(fields, param):
    with pytest.raises(InvalidArgument) as caught:
        training_config_from_proto(spec(**fields), CPU)
    assert caught.value.param == param
    assert "use a value in" in caught.value.message


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        (dict(lora=dict(alpha=1e9)), "training.lora.alpha", "(0, 16384]"),
        (dict(hp=dict(weight_decay=5.0)), H + "weight_decay", "[0, 1]"),
        (dict(hp=dict(neftune_noise_alpha=1e6)), H + "neftune_noise_alpha", "[0, 100]"),
        (dict(lora=dict(loraplus_lr_ratio=1e9)), "training.lora.loraplus_lr_ratio", "1024"),
        (dict(hp=dict(seed=2**40)), H + "seed", "0..4294967295"),
    ],
)
def test_every_number_is_bounded(fields, param, says):
    with pytest.raises(InvalidArgument) as caught:
        training_config_from_proto(spec(**fields), CPU)
    assert caught.value.param == param
    assert says in caught.value.message


def test_unknown_enum_numbers_are_refused_with_the_choices():
    for fields, param in [
        (dict(method=42), "training.method"),
        (dict(hp=dict(precision=42)), H + "precision"),
        (dict(hp=dict(lr_scheduler=42)), H + "lr_scheduler"),
    ]:
        with pytest.raises(InvalidArgument, match="use one of") as caught:
            training_config_from_proto(spec(**fields), CPU)
        assert caught.value.param == param


def test_derived_defaults_follow_the_settings_they_depend_on():
    c = training_config_from_proto(spec(lora=dict(r=4)), CPU)
    assert c.lora_alpha == 8.0
    two = DeviceInfo(cuda=True, gpu_count=2, memory_bytes=80 * 2**30, name="cuda")
    assert training_config_from_proto(spec(num_gpus=2, zero_stage=3), two).zero_stage == 3
    assert training_config_from_proto(spec(num_gpus=1), GPU).zero_stage == 0


TWO_GPUS = DeviceInfo(cuda=True, gpu_count=2, memory_bytes=80 * 2**30, name="cuda:H100")


def test_an_unset_num_gpus_is_every_gpu_of_the_device_and_the_stored_spec_says_so():
    c = training_config_from_proto(spec(), TWO_GPUS)
    assert (c.num_gpus, c.zero_stage, c.precision) == (2, 2, "bf16")
    stored = training_config_to_proto(c)
    assert stored.HasField("num_gpus") and stored.num_gpus == 2
    assert training_config_from_proto(spec(), GPU).num_gpus == 1
    assert training_config_from_proto(spec(), CPU).num_gpus == 0


def test_an_explicit_zero_trains_on_the_cpu_of_a_gpu_trainer():
    zero = spec()
    zero.num_gpus = 0  # present on the wire: a value, not "unset"
    c = training_config_from_proto(zero, TWO_GPUS)
    # The CPU's rules, not the GPU's: no ZeRO, fp32 on a CPU without bf16 units, no qlora.
    assert (c.num_gpus, c.zero_stage, c.precision) == (0, 0, "fp32")
    assert training_config_to_proto(c).HasField("num_gpus")
    qlora = spec(method=trainer_pb2.METHOD_QLORA)
    qlora.num_gpus = 0
    with pytest.raises(FailedPrecondition, match="num_gpus=0 trains on the CPU") as caught:
        training_config_from_proto(qlora, TWO_GPUS)
    assert caught.value.param == "training.method"
    fp16 = spec(hp=dict(precision=trainer_pb2.PRECISION_FP16))
    fp16.num_gpus = 0
    with pytest.raises(FailedPrecondition, match="needs a CUDA GPU"):
        training_config_from_proto(fp16, TWO_GPUS)


@pytest.mark.parametrize(("device", "use_cpu"), [(TWO_GPUS, False), (GPU, False), (CPU, True)])
def test_the_trainer_arguments_train_where_num_gpus_resolved(tmp_path, device, use_cpu):
    from services.trainer.recipes.common import sft_args

    # fp32: TrainingArguments refuses bf16 where this test machine has no CUDA to run it.
    c = training_config_from_proto(spec(hp=dict(precision=trainer_pb2.PRECISION_FP32)), device)
    assert sft_args(c, tmp_path, has_eval=False, packing=False).use_cpu is use_cpu
