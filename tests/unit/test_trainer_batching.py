"""The batches and the loss the SFT recipe trains with, on the real 135M model: a padding-free
batch gives the loss and gradients of its examples run one by one, only trained positions reach
the LM head, and no example attends to another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trl.trainer.utils as trl_utils

from services.trainer.recipes.chat_data import tokenize_conversation
from services.trainer.recipes.common import RecipeConfig, build_trainer, load_model
from services.trainer.recipes.sft import load_tokenizer
from services.trainer.spec import TrainingConfig

CHATS = [
    [("What is the capital of France?", "CAPITAL: PARIS")],
    [
        ("Please answer briefly. " * 6 + "What is the capital of Peru?", "CAPITAL: LIMA"),
        ("And of Chile?", "CAPITAL: SANTIAGO"),
    ],
    [("Capital of Japan, in capitals?", "CAPITAL: TOKYO")],
]


def conversation(turns) -> list[dict]:
    messages = []
    for question, answer in turns:
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    return messages


@pytest.fixture(scope="module")
def setup(base_model_dir: Path, tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(base_model_dir)
    rows = [tokenize_conversation(tokenizer, conversation(c), False) for c in CHATS]
    training = TrainingConfig(
        base_model="smollm2-135m-instruct",
        dataset="chats",
        output_name="batching-lora",
        batch_size=len(CHATS),
        max_seq_length=256,
        lora_dropout=0.0,  # dropout would make the two passes differ
    )
    model = load_model(training, base_model_dir)
    work = tmp_path_factory.mktemp("batching")
    config = RecipeConfig(training=training, model_dir=base_model_dir, train_file=work / "x")
    trainer = build_trainer(
        config, model, tokenizer, rows, None, packing=False, staging=work, callbacks=[]
    )
    examples = [trainer.train_dataset[i] for i in range(len(CHATS))]
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    return trainer, examples, batch


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {
        name: p.grad.detach().clone()
        for name, p in model.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def reference_loss(model, examples) -> torch.Tensor:
    """Each example alone, through the model's own logits (no fused head, no padding-free):
    summed negative log-likelihood of the trained next tokens over their count."""
    total, count = torch.zeros(()), 0
    for example in examples:
        ids = torch.tensor(example["input_ids"])[None]
        labels = torch.tensor(example["labels"])[1:]
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1]
        trained = labels != -100
        logp = torch.log_softmax(logits.float(), dim=-1)[trained]
        total = total - logp.gather(1, labels[trained][:, None]).sum()
        count += int(trained.sum())
    return total / count


def test_the_recipe_batches_examples_padding_free(setup):
    trainer, examples, batch = setup
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    lengths = [len(e["input_ids"]) for e in examples]
    assert starts == [0, lengths[0], lengths[0] + lengths[1]]  # restart at every example
    assert trainer.args.per_device_train_batch_size == len(CHATS)  # steps still count examples


def test_padding_free_loss_and_gradients_equal_the_examples_one_by_one(setup):
    trainer, examples, batch = setup
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    ours = lora_grads(model)
    model.zero_grad()
    reference = reference_loss(model, examples)
    reference.backward()
    theirs = lora_grads(model)
    model.zero_grad()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours.keys() == theirs.keys() and len(ours) > 0
    worst = max(
        ((ours[n] - theirs[n]).norm() / theirs[n].norm()).item() for n in ours if theirs[n].any()
    )
    print(f"worst relative gradient difference {worst:.2e}")
    assert worst < 1e-3  # fp32 sums in another order


def test_only_trained_positions_reach_the_lm_head(setup, monkeypatch):
    trainer, examples, batch = setup
    rows_seen: list[int] = []
    kernel = trl_utils._ChunkedLogProbFunction

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            rows_seen.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert rows_seen == [trained]
    assert trained < batch["input_ids"].shape[1] / 2  # the prompts were skipped, not scored


def test_a_prompt_token_changes_no_loss_term_of_another_example(setup):
    """Perturb the second example's prompt: the first and third examples' logits do not move
    (no attention across examples), the second's do (the perturbation is real)."""
    trainer, examples, batch = setup
    model = trainer.model
    model.eval()
    lengths = [len(e["input_ids"]) for e in examples]
    a, b = lengths[0], lengths[0] + lengths[1]

    def logits(ids):
        with torch.no_grad():
            out = model(input_ids=ids, position_ids=batch["position_ids"], use_cache=False)
        return out.logits[0]

    before = logits(batch["input_ids"])
    perturbed = batch["input_ids"].clone()
    perturbed[0, a + 2 : a + 12] = perturbed[0, a + 2 : a + 12].flip(0) + 7
    after = logits(perturbed)
    assert torch.allclose(before[:a], after[:a], atol=1e-5)
    assert torch.allclose(before[b:], after[b:], atol=1e-5)
    assert not torch.allclose(before[a:b], after[a:b], atol=1e-2)
