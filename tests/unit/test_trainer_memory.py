"""The memory estimate against numbers computed by hand."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition
from services.trainer.device import DeviceInfo
from services.trainer.memory import (
    CPU_OVERHEAD,
    GIB,
    ModelShape,
    activation_bytes,
    estimate_memory,
    require_fit,
)
from services.trainer.spec import TrainingConfig

# SmolLM2-135M's config.json.
SMOLLM2 = ModelShape.from_config(
    {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    }
)
# A toy shape small enough to add up on paper.
TOY = ModelShape(
    hidden=8,
    layers=2,
    heads=2,
    kv_heads=2,
    head_dim=4,
    intermediate=16,
    vocab=10,
    tied_embeddings=False,
)
CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * GIB, name="cpu")


def config(**kw) -> TrainingConfig:
    return TrainingConfig(base_model="m", dataset="d", output_name="o", **kw)


def test_parameter_counts_match_the_published_model():
    # 30 x (2*576*576 + 2*576*192 + 3*576*1536 + 2*576) + 49152*576 + 576
    assert SMOLLM2.total_params() == 134_515_008
    # 30 x 16 x (2*(576+576) + 2*(576+192) + 2*(576+1536) + (1536+576)) = PEFT's count
    assert SMOLLM2.lora_params(16, ("all-linear",)) == 4_884_480
    assert SMOLLM2.lora_params(8, ("q_proj", "v_proj")) == 30 * 8 * ((576 + 576) + (576 + 192))


def test_toy_terms_by_hand():
    # per layer: q,k,v,o 4 x 8*8 = 256; gate, up, down 3 x 8*16 = 384; norms 16 -> 656
    assert TOY.layer_params() == 656
    assert TOY.total_params() == 2 * 656 + 2 * 10 * 8 + 8  # untied embeddings: 1480
    c = config(lora_r=2, batch_size=3, max_seq_length=4, precision="bf16")
    # s*b*h*(34 + 5*a*s/h) = 4*3*8*(34 + 5*2*4/8) = 96*39 = 3744 per layer, 16-bit
    assert activation_bytes(c, TOY, 3) == 2 * 3744
    # fp32 doubles it; checkpointing keeps 2*s*b*h per layer plus one full layer
    assert activation_bytes(config(batch_size=3, max_seq_length=4), TOY, 3) == 2 * 2 * 3744
    ckpt = config(batch_size=3, max_seq_length=4, precision="bf16", gradient_checkpointing=True)
    assert activation_bytes(ckpt, TOY, 3) == 2 * 2 * 96 + 3744

    terms = dict(estimate_memory(c, TOY, CPU).terms)
    lora = 2 * 2 * (4 * (8 + 8) + 2 * (8 + 16) + (16 + 8))  # layers * r * sum(in+out) = 544
    assert terms["base_weights"] == 1480 * 2
    assert terms["trainable_weights_gradients_optimizer"] == 16 * lora
    assert terms["logits"] == 2 * 3 * 4 * 10 * 4
    assert terms["framework_overhead"] == CPU_OVERHEAD


def test_full_fine_tuning_is_16_bytes_per_parameter_and_qlora_half_a_byte():
    full = dict(estimate_memory(config(method="full"), TOY, CPU).terms)
    assert full["trainable_weights_gradients_optimizer"] == 16 * 1480
    assert full["base_weights"] == 0
    gpu = DeviceInfo(cuda=True, gpu_count=1, memory_bytes=80 * GIB, name="cuda")
    q = dict(estimate_memory(config(method="qlora", precision="bf16"), SMOLLM2, gpu).terms)
    assert q["base_weights"] == int(134_515_008 * 0.5 * 1.0625)


def test_zero_stages_follow_deepspeeds_estimators():
    gpus = DeviceInfo(cuda=True, gpu_count=4, memory_bytes=80 * GIB, name="cuda")
    p = 1480
    z2 = dict(estimate_memory(config(method="full", num_gpus=4, zero_stage=2), TOY, gpus).terms)
    assert z2["trainable_weights_gradients_optimizer"] == int(4 * p + 16 * p / 4)
    z3 = dict(estimate_memory(config(method="full", num_gpus=4, zero_stage=3), TOY, gpus).terms)
    largest = max(656, 10 * 8)
    assert z3["trainable_weights_gradients_optimizer"] == int(4 * largest + 18 * p / 4)


def test_the_135m_job_of_the_tests_fits_a_laptop():
    est = estimate_memory(config(batch_size=4, max_seq_length=128), SMOLLM2, CPU)
    assert 1.5 * GIB < est.peak_bytes < 4 * GIB  # measured: ~2.1 GiB peak RSS
    assert require_fit(config(batch_size=4, max_seq_length=128), SMOLLM2, CPU) is not None


def test_a_job_that_cannot_fit_says_by_how_much_and_what_to_lower():
    small = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=8 * GIB, name="cpu")
    with pytest.raises(FailedPrecondition) as caught:
        require_fit(config(batch_size=64, max_seq_length=1024), SMOLLM2, small)
    assert "GiB short" in caught.value.message
    assert "lower batch_size to" in caught.value.message
    assert caught.value.param == "training.hyperparameters.batch_size"
    suggested = int(caught.value.message.split("lower batch_size to ")[1].split()[0])
    assert estimate_memory(config(batch_size=suggested, max_seq_length=1024), SMOLLM2, small).fits
    with pytest.raises(FailedPrecondition, match="lower max_seq_length") as huge:
        require_fit(config(batch_size=4096, max_seq_length=8192), SMOLLM2, CPU)
    assert huge.value.param == "training.hyperparameters.max_seq_length"
