"""``trained_tokens`` counts every input token the Trainer consumes: with SmolLM2's tokenizer
the pad id is the EOS id (``<|im_end|>``, which ends each turn), so counting "non-padding"
tokens of a padding-free batch would leave every turn's end out. On the real 135M model and
the recipe's own Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.recipes.chat_data import tokenize_conversation
from services.trainer.recipes.common import RecipeConfig, build_trainer, load_model
from services.trainer.recipes.sft import load_tokenizer
from services.trainer.spec import TrainingConfig

CHATS = [
    [("What is the capital of France?", "CAPITAL: PARIS")],
    [("Please answer briefly. " * 6 + "What is the capital of Peru?", "CAPITAL: LIMA")],
    [("Capital of Japan, in capitals?", "CAPITAL: TOKYO")],
]


@pytest.fixture(scope="module")
def model_and_rows(base_model_dir: Path):
    tokenizer = load_tokenizer(base_model_dir)
    rows = [
        tokenize_conversation(
            tokenizer,
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            False,
        )
        for ((q, a),) in CHATS
    ]
    training = TrainingConfig(
        base_model="smollm2-135m-instruct", dataset="chats", output_name="count-lora"
    )
    return tokenizer, rows, load_model(training, base_model_dir)


@pytest.mark.parametrize("padding_free", [True, False])
def test_a_batch_counts_every_token_of_its_examples(
    model_and_rows, base_model_dir, tmp_path, padding_free
):
    tokenizer, rows, model = model_and_rows
    assert all(tokenizer.pad_token_id in r["input_ids"] for r in rows)  # what made it matter
    training = TrainingConfig(
        base_model="smollm2-135m-instruct",
        dataset="chats",
        output_name="count-lora",
        batch_size=len(rows),
        max_seq_length=256,
        padding_free=padding_free,
    )
    config = RecipeConfig(training=training, model_dir=base_model_dir, train_file=tmp_path / "x")
    trainer = build_trainer(
        config, model, tokenizer, rows, None, packing=False, staging=tmp_path, callbacks=[]
    )
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = trainer.data_collator(examples)
    trainer._track_num_input_tokens(batch)
    assert trainer.state.num_input_tokens_seen == sum(len(r["input_ids"]) for r in rows)
