"""Every training option of the spec, run for real on SmolLM2-135M on the CPU, through the
product's own path: a ``TrainingConfig`` as a job carries it, ``load_model``, ``build_trainer``
(what ``fit`` trains with) or ``fit`` itself, and the recipes' own data preparation. Each test
asserts what its option is for, and that it took effect in the model or optimizer built.

- DoRA, rsLoRA, LoRA+, full fine-tuning, continued pretraining: a few steps at a high learning
  rate on a tiny repeated dataset; the loss falls and the option is in the built model.
- Packing: SFT packing (TRL's best-fit packing of pre-tokenized rows) and continued
  pretraining's blocks keep prompt labels at -100 and each example to itself. The padding-free
  batches of unpacked SFT are proven by ``tests/unit/test_trainer_batching.py`` (loss and
  gradients of the examples one by one, no attention across examples), not again here.
- NEFTune noises the input embeddings in training only; gradient checkpointing is really on and
  changes neither loss nor gradients; early stopping stops before ``max_steps`` and publishes
  the best evaluated step (the report says so; the tensors are that checkpoint's).

Not here: QLoRA (bitsandbytes 4-bit) and DeepSpeed ZeRO need CUDA GPUs, which these machines
lack. Each test loads its own model through ``load_model`` (~2.5 s, less than copying one): a
run changes a model in place (PEFT wrapping, full fine-tuning, checkpointing and NEFTune hooks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from services.trainer.checkpoints import complete_checkpoints
from services.trainer.recipes.chat_data import pack_text_file, tokenize_conversation
from services.trainer.recipes.common import RecipeConfig, build_trainer, fit, load_model
from services.trainer.recipes.sft import load_tokenizer
from services.trainer.spec import TrainingConfig
from tests.helpers.sample_data import CAPITALS

pytestmark = pytest.mark.integration

STEPS = 8


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    return load_tokenizer(base_model_dir)


def chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def capital_rows(tokenizer, n: int = 4, *, shift: int = 0, long_every: int = 0) -> list[dict]:
    """Pre-tokenized chat rows as the SFT recipe builds them; ``shift`` pairs each country
    with another country's capital (a validation set the training data contradicts)."""
    rows = []
    for i in range(n):
        country = CAPITALS[i][0]
        capital = CAPITALS[(i + shift) % len(CAPITALS)][1]
        question = f"What is the capital of {country}?"
        if long_every and i % long_every == 0:
            question = "Please answer briefly. " * 3 + question
        rows.append(
            tokenize_conversation(tokenizer, chat(question, f"CAPITAL: {capital.upper()}"), False)
        )
    return rows


def spec(**settings) -> TrainingConfig:
    values: dict = dict(
        base_model="smollm2-135m-instruct",
        dataset="options",
        output_name="options-lora",
        max_steps=STEPS,
        batch_size=4,
        max_seq_length=128,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        lora_r=8,
        lora_dropout=0.0,
        seed=0,
    )
    values.update(settings)
    return TrainingConfig(**values)


def trainer_for(training, model, tokenizer, rows, work: Path, *, packing=False, callbacks=()):
    config = RecipeConfig(training=training, model_dir=work, train_file=work / "unused")
    return build_trainer(
        config,
        model,
        tokenizer,
        rows,
        None,
        packing=packing,
        staging=work / "staging",
        callbacks=list(callbacks),
    )


def train(training, base_model_dir, tokenizer, rows, work: Path, **kwargs):
    torch.manual_seed(0)
    model = load_model(training, base_model_dir)
    trainer = trainer_for(training, model, tokenizer, rows, work, **kwargs)
    trainer.train()
    return trainer


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def assert_loss_falls(trainer) -> None:
    curve = losses(trainer)
    print("loss curve", [round(x, 3) for x in curve])
    assert len(curve) == STEPS
    assert curve[-1] < 0.5 * curve[0]


def snapshot(model, part: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if part in n}


def test_dora_trains_its_magnitude_vectors(base_model_dir, tokenizer, tmp_path):
    training = spec(method="dora")
    torch.manual_seed(0)
    model = load_model(training, base_model_dir)
    before = snapshot(model, "lora_magnitude_vector")
    assert before and all(p.requires_grad for n, p in model.named_parameters() if n in before)
    trainer = trainer_for(training, model, tokenizer, capital_rows(tokenizer), tmp_path)
    trainer.train()
    assert_loss_falls(trainer)
    after = snapshot(model, "lora_magnitude_vector")
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_rslora_scales_by_alpha_over_sqrt_r(base_model_dir, tokenizer, tmp_path):
    from peft.tuners.lora import LoraLayer

    training = spec(use_rslora=True, lora_r=8, lora_alpha=16.0)
    trainer = train(training, base_model_dir, tokenizer, capital_rows(tokenizer), tmp_path)
    scalings = [m.scaling["default"] for m in trainer.model.modules() if isinstance(m, LoraLayer)]
    assert scalings and all(s == pytest.approx(16 / math.sqrt(8)) for s in scalings)  # not 2.0
    assert_loss_falls(trainer)


def test_loraplus_gives_b_matrices_ratio_times_the_learning_rate(
    base_model_dir, tokenizer, tmp_path
):
    training = spec(loraplus_lr_ratio=16.0, learning_rate=5e-4)
    torch.manual_seed(0)
    model = load_model(training, base_model_dir)
    trainer = trainer_for(training, model, tokenizer, capital_rows(tokenizer), tmp_path)
    names = {id(p): n for n, p in model.named_parameters()}
    trainer.train()
    assert_loss_falls(trainer)
    rate_of: dict[str, set[float]] = {"lora_A": set(), "lora_B": set()}
    for group in trainer.optimizer.param_groups:  # the optimizer that trained
        for p in group["params"]:
            for matrix, rates in rate_of.items():
                if matrix in names[id(p)]:
                    rates.add(group["initial_lr"])
    (rate_a,), (rate_b,) = rate_of["lora_A"], rate_of["lora_B"]
    assert rate_a == 5e-4 and rate_b == pytest.approx(5e-4 * 16)


def test_full_fine_tune_trains_every_weight_without_peft(base_model_dir, tokenizer, tmp_path):
    from peft import PeftModel

    training = spec(method="full", output_name="options-full", learning_rate=5e-5)
    torch.manual_seed(0)
    model = load_model(training, base_model_dir)
    assert not isinstance(model, PeftModel)
    assert all(p.requires_grad for p in model.parameters())
    before = snapshot(model, "layers.0.mlp.down_proj")
    trainer = trainer_for(training, model, tokenizer, capital_rows(tokenizer), tmp_path)
    trainer.train()
    assert trainer.model is model and not isinstance(trainer.model, PeftModel)
    assert_loss_falls(trainer)
    after = snapshot(model, "layers.0.mlp.down_proj")
    assert all(not torch.equal(before[n], after[n]) for n in before)


DOCUMENTS = [
    "The red fox jumps over the lazy dog near the quiet river bank.",
    "Seven silver spoons lay on the oak table after the long dinner.",
    "A cold wind blew across the northern hills all winter long.",
]


def alone_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


def assert_segments_isolated(model, batch, segments: list[tuple[int, int]]) -> None:
    """Each segment's logits in the packed sequence equal those of the segment run alone."""
    model.eval()
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
    ids = batch["input_ids"][0].tolist()
    for start, stop in segments:
        alone = alone_logits(model, ids[start:stop])
        # fp32 noise of kernels that block a long and a short sequence differently (1.6e-4 on
        # logits of ~28 on an AMX CPU); a segment that saw another would be off by O(1).
        assert torch.allclose(packed[start:stop], alone, atol=1e-3), (start, stop)


def segments_of(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    return list(zip(starts, [*starts[1:], position_ids.shape[1]], strict=True))


def test_continued_pretraining_keeps_documents_apart_and_learns(
    base_model_dir, tokenizer, tmp_path
):
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS * 4))
    training = spec(method="continued_pretraining", max_seq_length=32, batch_size=2)
    blocks = pack_text_file(text, tokenizer, training.max_seq_length)
    torch.manual_seed(0)
    model = load_model(training, base_model_dir)
    trainer = trainer_for(training, model, tokenizer, blocks, tmp_path)
    block = next(b for b in blocks if len(b["seq_lengths"]) > 1)
    batch = trainer._prepare_inputs(
        trainer.data_collator([trainer.train_dataset[blocks.index(block)]])
    )
    segments = segments_of(batch["position_ids"])
    assert [b - a for a, b in segments] == block["seq_lengths"]  # restart at each document
    labels = batch["labels"][0].tolist()
    starts = {a for a, _ in segments}
    # Every token is trained on, but a document's first: nothing before it in its document.
    assert labels == [-100 if i in starts else t for i, t in enumerate(block["input_ids"])]
    assert_segments_isolated(trainer.model, batch, segments)
    trainer.train()
    assert_loss_falls(trainer)


def test_sft_packing_keeps_prompt_labels_masked_and_examples_apart(
    base_model_dir, tokenizer, tmp_path
):
    rows = capital_rows(tokenizer, 8, long_every=3)
    training = spec(packing=True, max_seq_length=128, max_steps=1, batch_size=2)
    torch.manual_seed(0)
    model = load_model(training, base_model_dir)
    trainer = trainer_for(training, model, tokenizer, rows, tmp_path, packing=True)
    packed = max(
        (trainer.train_dataset[i] for i in range(len(trainer.train_dataset))),
        key=lambda r: len(r["seq_lengths"]),
    )
    assert len(packed["seq_lengths"]) > 1  # several examples share the sequence
    batch = trainer._prepare_inputs(trainer.data_collator([packed]))
    segments = segments_of(batch["position_ids"])
    assert [b - a for a, b in segments] == packed["seq_lengths"]
    labels = batch["labels"][0].tolist()
    ids = batch["input_ids"][0].tolist()
    for start, stop in segments:
        (row,) = [r for r in rows if r["input_ids"] == ids[start:stop]]  # an example, whole
        expected = [
            t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True)
        ]
        assert labels[start:stop] == [-100, *expected[1:]]  # the prompt is not trained on
        assert labels[start:stop].count(-100) > len(expected) / 2
    assert_segments_isolated(trainer.model, batch, segments)


class EmbeddingProbe(TrainerCallback):
    """At the first training step (NEFTune's hook is on then): the input embeddings' output in
    train and eval mode, and the plain lookup."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids
        self.seen: dict[str, torch.Tensor] = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.seen:
            return
        embeddings = model.get_input_embeddings()
        with torch.no_grad():
            model.train()
            self.seen["train"] = embeddings(self.ids)
            model.eval()
            self.seen["eval"] = embeddings(self.ids)
            model.train()
            self.seen["plain"] = embeddings.weight[self.ids]


def test_neftune_noises_embeddings_in_training_only(base_model_dir, tokenizer, tmp_path):
    ids = torch.tensor([tokenizer("What is the capital of Peru?")["input_ids"]])
    probe = EmbeddingProbe(ids)
    training = spec(neftune_noise_alpha=5.0, max_steps=1)
    trainer = train(
        training, base_model_dir, tokenizer, capital_rows(tokenizer), tmp_path, callbacks=[probe]
    )
    plain = probe.seen["plain"]
    noise = (probe.seen["train"] - plain).abs().max().item()
    bound = 5.0 / math.sqrt(ids.shape[1] * plain.shape[-1])  # NEFTune's alpha / sqrt(L * d)
    assert 0 < noise <= bound * 1.0001
    assert torch.equal(probe.seen["eval"], plain)
    embeddings = trainer.model.get_input_embeddings()
    trainer.model.train()
    with torch.no_grad():  # the hook is gone once training ends
        assert torch.equal(embeddings(ids), plain)


class GradientProbe(TrainerCallback):
    """The trainable parameters' gradients before the first optimizer step, and whether the
    model recomputes activations."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}
        self.checkpointing: bool | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.grads:
            self.checkpointing = model.is_gradient_checkpointing
            self.grads = {
                n: p.grad.detach().clone()
                for n, p in model.named_parameters()
                if p.requires_grad and p.grad is not None
            }


def test_gradient_checkpointing_is_on_and_changes_no_gradient(base_model_dir, tokenizer, tmp_path):
    rows = capital_rows(tokenizer)
    runs = {}
    for on in (True, False):
        probe = GradientProbe()
        trainer = train(
            spec(gradient_checkpointing=on, max_steps=1),
            base_model_dir,
            tokenizer,
            rows,
            tmp_path / str(on),
            callbacks=[probe],
        )
        runs[on] = (probe, losses(trainer)[0])
    (with_it, loss_with), (without, loss_without) = runs[True], runs[False]
    assert with_it.checkpointing is True and without.checkpointing is False
    assert loss_with == pytest.approx(loss_without, rel=1e-5)
    assert with_it.grads.keys() == without.grads.keys() and with_it.grads
    worst = max(
        ((with_it.grads[n] - without.grads[n]).norm() / without.grads[n].norm()).item()
        for n in without.grads
        if without.grads[n].any()
    )
    assert worst < 1e-4


def write_rows(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"messages": chat(q, a)}) + "\n" for q, a in pairs))
    return path


def test_early_stopping_stops_and_publishes_the_best_step(base_model_dir, tokenizer, tmp_path):
    """Training on right capitals while validating on wrong ones: the eval loss stops improving
    soon, training stops well before max_steps, and the output holds the best step."""
    max_steps = 40
    training = spec(
        validation_dataset="options-val",
        max_steps=max_steps,
        eval_steps=2,
        save_steps=50,  # checkpoints follow the evaluations instead
        early_stopping_patience=2,
        learning_rate=2e-3,
    )
    questions = [f"What is the capital of {c}?" for c, _ in CAPITALS[:4]]
    train_file = write_rows(
        tmp_path / "train.jsonl",
        [(q, f"CAPITAL: {c.upper()}") for q, (_, c) in zip(questions, CAPITALS, strict=False)],
    )
    eval_file = write_rows(
        tmp_path / "val.jsonl",
        [(q, f"CAPITAL: {c.upper()}") for q, (_, c) in zip(questions, CAPITALS[8:], strict=False)],
    )
    config = RecipeConfig(
        training=training,
        model_dir=base_model_dir,
        train_file=train_file,
        eval_file=eval_file,
        checkpoint_dir=tmp_path / "checkpoints",
    )
    torch.manual_seed(0)
    model = load_model(training, base_model_dir)
    output = tmp_path / "output"
    report = fit(
        config,
        output,
        model,
        tokenizer,
        capital_rows(tokenizer),
        capital_rows(tokenizer, shift=8),
        packing=False,
    )
    evals = dict(map(tuple, report["loss_history"]["eval"]))
    print("eval losses", evals)
    best = min(evals, key=evals.__getitem__)
    last = report["steps"]
    assert last < max_steps and report["published_step"] == best < last
    worse = sum(1 for step in evals if step > best)
    assert worse == 2  # the patience
    assert report["published_because"] == (
        f"best eval_loss {evals[best]:.4f} at step {best} "
        "(early stopping after 2 evaluations without improvement)"
    )
    assert report["metrics"]["eval_loss"] == pytest.approx(evals[best])
    assert json.loads((output / "training_report.json").read_text()) == json.loads(
        json.dumps(report, default=str)
    )
    saved = {c.step: c.path for c in complete_checkpoints(tmp_path / "checkpoints")}
    assert set(evals) <= set(saved)  # every evaluation is a checkpoint, the best one kept
    published = load_file(output / "adapter_model.safetensors")
    at_best = load_file(saved[best] / "adapter_model.safetensors")
    at_last = load_file(saved[last] / "adapter_model.safetensors")
    assert published.keys() == at_best.keys() and published
    assert all(torch.equal(published[k], at_best[k]) for k in published)
    assert any(not torch.equal(published[k], at_last[k]) for k in published)
