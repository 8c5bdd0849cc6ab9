"""The memory estimate against numbers computed by hand."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition
from services.common.training_spec import FIELDS, section_of
from services.common.training_spec_proto import config_from_values
from services.common.training_spec_text import bounds_of
from services.trainer.device import DeviceInfo
from services.trainer.memory import (
    CPU_TRAINING_OVERHEAD,
    GIB,
    ModelShape,
    activation_bytes,
    checkpoint_if_needed,
    estimate_memory,
    require_fit,
)
from services.trainer.service import memory_response
from services.trainer.spec import TrainingConfig
from tests.helpers.admission_registry import SMOLLM2_CONFIG

SMOLLM2 = ModelShape.from_config(SMOLLM2_CONFIG)
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


def on_paper(**kw) -> TrainingConfig:
    """A config too small for validation (4-token sequences) that adds up by hand with TOY."""
    return TrainingConfig.model_construct(base_model="m", dataset="d", output_name="o", **kw)


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
    c = on_paper(lora_r=2, batch_size=3, max_seq_length=4, precision="bf16")
    # s*b*h*104/2 = 4*3*8*52 = 96*52 = 4992 per layer in 16-bit (104 bytes in fp32)
    assert activation_bytes(c, TOY, 3) == 2 * 96 * 52
    # fp32 doubles it; checkpointing keeps 2*s*b*h per layer (16-bit) plus one full layer
    assert activation_bytes(on_paper(batch_size=3, max_seq_length=4), TOY, 3) == 2 * 96 * 104
    ckpt = on_paper(batch_size=3, max_seq_length=4, precision="bf16", gradient_checkpointing=True)
    assert activation_bytes(ckpt, TOY, 3) == 2 * 2 * 96 + 96 * 52

    terms = dict(estimate_memory(c, TOY, CPU).terms)
    lora = 2 * 2 * (4 * (8 + 8) + 2 * (8 + 16) + (16 + 8))  # layers * r * sum(in+out) = 544
    assert terms["base_weights"] == 1480 * 2
    assert terms["trainable_weights_gradients_optimizer"] == 16 * lora
    # b*s*vocab fp32 values, 15 copies (calibrated)
    assert terms["logits"] == 15 * 3 * 4 * 10 * 4
    assert terms["framework_overhead"] == CPU_TRAINING_OVERHEAD


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


def test_gradient_checkpointing_is_turned_on_only_when_memory_asks_for_it():
    job = config(batch_size=16, max_seq_length=1024)
    without = estimate_memory(job, SMOLLM2, CPU).peak_bytes
    with_ = estimate_memory(job.model_copy(update={"gradient_checkpointing": True}), SMOLLM2, CPU)
    assert with_.peak_bytes < without
    roomy = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=without + GIB, name="cpu")
    tight = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=with_.peak_bytes + 1, name="cpu")
    hopeless = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=with_.peak_bytes // 2, name="cpu")
    assert checkpoint_if_needed(job, SMOLLM2, roomy) is job  # fits: no recompute cost
    assert checkpoint_if_needed(job, SMOLLM2, tight).gradient_checkpointing
    assert estimate_memory(checkpoint_if_needed(job, SMOLLM2, tight), SMOLLM2, tight).fits
    # Not even checkpointing fits: left as asked, so require_fit names what to lower.
    assert checkpoint_if_needed(job, SMOLLM2, hopeless) is job


# Llama-3.1-405B's config.json: the largest shape the estimate is likely to meet.
LLAMA_405B = ModelShape(
    hidden=16384,
    layers=126,
    heads=128,
    kv_heads=8,
    head_dim=128,
    intermediate=53248,
    vocab=128256,
    tied_embeddings=False,
)


def largest_validated(**kw) -> TrainingConfig:
    """Every bounded number of the spec at the top of its range, as validation lets through."""
    top = {}
    for name in FIELDS:
        b = bounds_of(name)
        if name in ("num_gpus", "zero_stage") or not ({"le", "lt"} & set(b)):
            continue
        top[name] = (
            b["le"]
            if "le" in b
            else (b["lt"] - 1 if FIELDS[name].annotation is int else b["lt"] * 0.99)
        )
    top.pop("eval_steps"), top.pop("early_stopping_patience")  # they need a validation set
    if kw.get("method") == "full":
        top = {n: v for n, v in top.items() if section_of(n) != "lora"}
    return config_from_values({"base_model": "m", "dataset": "d", "output_name": "o", **top, **kw})


@pytest.mark.parametrize("method", ["lora", "dora", "qlora", "full"])
@pytest.mark.parametrize(("gpus", "zero"), [(0, 0), (1024, 2), (1024, 3)])
def test_the_estimate_of_any_validated_spec_fits_the_wire_and_agrees_with_create(
    method, gpus, zero
):
    if method == "qlora" and zero == 3:
        return  # refused by validation
    config = largest_validated(method=method, num_gpus=gpus, zero_stage=zero)
    device = DeviceInfo(cuda=bool(gpus), gpu_count=gpus, memory_bytes=80 * GIB, name="cuda")
    for shape in (SMOLLM2, LLAMA_405B):
        est = estimate_memory(config, shape, device)
        response = memory_response(est)  # EstimateJobMemory: no "Value out of range"
        assert response.peak_bytes == est.peak_bytes > response.available_bytes
        assert all(0 <= t.bytes < 2**63 for t in response.terms)
        with pytest.raises(FailedPrecondition, match="GiB short"):  # CreateJob
            require_fit(config, shape, device)


def test_a_huge_batch_and_sequence_do_not_overflow_the_estimate():
    est = estimate_memory(config(batch_size=65536, max_seq_length=1_048_576), SMOLLM2, CPU)
    assert memory_response(est).peak_bytes == est.peak_bytes < 2**63
    assert dict(est.terms)["base_weights"] == 134_515_008 * 4  # small terms stay exact


# Peak RSS of the SFT recipe (GiB), measured by benchmarks/memory_estimate.py on 2026-12-01
# (2-core AMD EPYC, AVX2, torch 2.13 CPU, TRL 1.16, PEFT 0.21; rows filling max_seq_length;
# LoRA r=16 on all linear layers, fp32). Data, not derivation: the table in docs/trainer.md.
MEASURED_PEAK_GIB = [
    ({"batch_size": 1, "max_seq_length": 256}, 2.12),
    ({"batch_size": 8, "max_seq_length": 256}, 9.19),
    ({"batch_size": 2, "max_seq_length": 512}, 5.25),
    ({"batch_size": 1, "max_seq_length": 1024}, 5.23),
    ({"batch_size": 4, "max_seq_length": 256, "gradient_checkpointing": True}, 3.75),
    ({"batch_size": 4, "max_seq_length": 256, "packing": True}, 5.52),
]


@pytest.mark.parametrize(("fields", "measured"), MEASURED_PEAK_GIB)
def test_the_estimate_is_within_25_percent_of_the_measured_peak(fields, measured):
    est = estimate_memory(config(**fields), SMOLLM2, CPU).peak_bytes / GIB
    # Within 25% as the issue asks, and never under: an underestimate gets a job OOM-killed.
    assert 1.0 <= est / measured <= 1.25, f"estimate {est:.2f} GiB vs measured {measured} GiB"


def test_the_readme_tour_fits_the_documented_machine():
    """README's `tuneplex jobs create --dataset shop-sql --output sql-lora --max-steps 60
    --lr 1e-3`: every other setting at its default, on the documented 24 GiB CPU machine, with
    room left for the gateway's engine beside it (it was refused: "needs 34.6 GiB")."""
    tour = config(max_steps=60, learning_rate=1e-3)
    estimate = require_fit(tour, SMOLLM2, CPU)
    assert estimate.peak_bytes < 20 * GIB, estimate.terms
