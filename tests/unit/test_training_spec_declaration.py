"""The one declaration of the training spec (``services/common/training_spec.py``) and the wire
cannot drift apart: every setting travels in exactly one proto field, every proto field is a
setting, and a config survives the trip through the proto unchanged."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.stubs import trainer_pb2
from services.common.training_spec import (
    ENUMS,
    FIELDS,
    SETTINGS,
    TrainingConfig,
    TrainingEvalConfig,
    param_of,
    proto_name,
    section_of,
)
from services.common.training_spec_proto import (
    config_from_values,
    config_to_proto,
    spec_from_values,
    values_from_proto,
)

REQUIRED = dict(base_model="smollm2-135m-instruct", dataset="shop-sql@1", output_name="sql-lora")
# A value other than the default for every setting, valid together.
EVERY_SETTING_CHANGED = dict(
    base_model="qwen2.5-0.5b-instruct@2",
    dataset="shop-sql@3",
    validation_dataset="shop-sql-val@1",
    output_name="other-lora",
    method="dora",
    num_gpus=4,
    zero_stage=3,
    lora_r=8,
    lora_alpha=12.5,
    lora_dropout=0.0,
    target_modules=("q_proj", "v_proj"),
    use_rslora=True,
    loraplus_lr_ratio=16.0,
    epochs=1.5,
    max_steps=60,
    learning_rate=1e-3,
    lr_scheduler="cosine",
    warmup_ratio=0.0,
    batch_size=4,
    gradient_accumulation_steps=2,
    max_seq_length=256,
    packing=True,
    neftune_noise_alpha=5.0,
    padding_free=False,
    gradient_checkpointing=True,
    precision="bf16",
    seed=0,
    eval_steps=10,
    save_steps=20,
    early_stopping_patience=2,
    train_on_prompt=True,
    weight_decay=0.01,
    dpo_beta=0.5,
    publish_checkpoints=True,
    evaluation=dict(
        eval_set="shop-sql-heldout@2",
        graders=({"type": "regex", "name": "select", "input": "{{sample.output_text}}"},),
        max_tokens=8,
        temperature=0.5,
        top_p=0.9,
        seed=0,
        each_checkpoint=True,
        promote_alias="prod",
        promote_margin=0.02,
    ),
)
SECTION_MESSAGES = {
    "": trainer_pb2.TrainingSpec,
    "lora": trainer_pb2.LoraConfig,
    "hyperparameters": trainer_pb2.Hyperparameters,
    "evaluation": trainer_pb2.TrainingEval,
    "evaluation.sampling": trainer_pb2.SamplingParams,
}


def test_every_setting_is_one_proto_field_and_every_proto_field_a_setting():
    declared = {(section_of(n), proto_name(n)) for n in SETTINGS}
    assert len(declared) == len(SETTINGS)
    on_the_wire = {
        (section, f.name)
        for section, message in SECTION_MESSAGES.items()
        for f in message.DESCRIPTOR.fields
        # the sections themselves are messages; graders are JSON objects (Structs)
        if f.message_type is None or f.message_type.full_name == "google.protobuf.Struct"
    }
    assert declared == on_the_wire
    for name in ENUMS:
        wire = SECTION_MESSAGES[section_of(name)].DESCRIPTOR.fields_by_name[proto_name(name)]
        assert set(ENUMS[name]) == {v.number for v in wire.enum_type.values} - {0}


def test_every_setting_has_help_text_and_a_param():
    for name, field in SETTINGS.items():
        assert field.description, name
        assert param_of(name).startswith("training.")


def test_a_config_with_every_setting_changed_round_trips_through_the_proto():
    assert set(EVERY_SETTING_CHANGED) == set(FIELDS)
    config = config_from_values(EVERY_SETTING_CHANGED)
    defaults = config_from_values(REQUIRED)
    changed = [n for n in FIELDS if getattr(config, n) == getattr(defaults, n)]
    assert changed == [], "every value must differ from its default to prove the mapping"
    evaluation = EVERY_SETTING_CHANGED["evaluation"]
    assert {f"evaluation.{n}" for n in evaluation} == {n for n in SETTINGS if "." in n}
    unchanged = [
        n for n, v in evaluation.items() if v == TrainingEvalConfig.model_fields[n].default
    ]
    assert unchanged == [], "the evaluation's settings too"
    spec = config_to_proto(config)
    assert config_from_values(values_from_proto(spec)) == config
    assert spec.lora.r == 8 and spec.hyperparameters.seed == 0 and spec.zero_stage == 3
    assert spec.hyperparameters.HasField("warmup_ratio") and spec.lora.HasField("dropout")
    assert spec.evaluation.sampling.max_tokens == 8 and spec.evaluation.sampling.HasField("seed")
    assert spec.evaluation.promote_alias == "prod" and len(spec.evaluation.graders) == 1


def test_a_full_fine_tune_round_trips_without_lora_settings():
    config = config_from_values({**REQUIRED, "method": "full"})
    spec = config_to_proto(config)
    assert not spec.HasField("lora")
    assert config_from_values(values_from_proto(spec)) == config


@pytest.mark.parametrize("name", [n for n in FIELDS if n not in REQUIRED])
def test_a_zero_value_means_on_the_config_what_it_means_on_the_wire(name):
    """Without explicit presence a proto3 zero is "unset": a config holding that zero would not
    survive the trip, so the declaration must either refuse it or mean the default by it."""
    field = SECTION_MESSAGES[section_of(name)].DESCRIPTOR.fields_by_name[proto_name(name)]
    if field.has_presence:
        return
    zero = {str: "", int: 0, float: 0.0, bool: False}.get(FIELDS[name].annotation, ())
    if name in ENUMS:
        return  # enum zero is *_UNSPECIFIED, which has no config value at all
    try:
        config = config_from_values({**REQUIRED, name: zero})
    except InvalidArgument:
        return
    assert getattr(config, name) == getattr(config_from_values(REQUIRED), name)


def test_spec_from_values_sets_only_what_is_given():
    spec = spec_from_values({"max_steps": 60, "learning_rate": 1e-3, "seed": 0, "method": "lora"})
    assert spec.hyperparameters.max_steps == 60 and spec.hyperparameters.HasField("seed")
    assert spec.method == trainer_pb2.METHOD_LORA
    assert not spec.hyperparameters.HasField("warmup_ratio") and not spec.HasField("lora")
    with pytest.raises(InvalidArgument, match="unknown training setting"):
        spec_from_values({"learning_rat": 1e-3})
    with pytest.raises(InvalidArgument, match="use one of"):
        spec_from_values({"precision": "fp8"})


def test_direct_construction_applies_the_same_rules():
    with pytest.raises(InvalidArgument, match="zero_stage applies to multi-GPU"):
        TrainingConfig(**REQUIRED, zero_stage=2)
    assert TrainingConfig(**REQUIRED, lora_r=4).lora_alpha == 8.0
