"""Continued-pretraining recipe: causal LM on packed plain-text blocks (``{"text": ...}`` rows).

    python -m services.trainer.recipes.pretrain --config job.json --output DIR

Every token is trained on; rows are EOS-joined and cut into ``max_seq_length`` blocks, so no
padding is wasted, and (``padding_free``, the default) position ids restart at each document so
documents sharing a block do not attend to each other. The base model gets a LoRA adapter
(settings as for SFT).
"""

from __future__ import annotations

from pathlib import Path

from services.trainer.recipes.chat_data import pack_text_file
from services.trainer.recipes.common import RecipeConfig, fit, load_model, recipe_main
from services.trainer.recipes.sft import load_tokenizer
from services.trainer.worker.protocol import emit


def run(config: RecipeConfig, output: Path) -> dict:
    """Continue pretraining a model on a JSONL text dataset."""
    t = config.training
    tokenizer = load_tokenizer(config.model_dir)
    train_rows = pack_text_file(config.train_file, tokenizer, t.max_seq_length)
    eval_rows = None
    if config.eval_file:
        eval_rows = pack_text_file(
            config.eval_file, tokenizer, t.max_seq_length, param="training.validation_dataset"
        )
    emit("log", message=f"{len(train_rows)} blocks of {t.max_seq_length} tokens")
    model = load_model(t, config.model_dir)
    # Blocks are already full: TRL's packing would only re-cut them (their ``seq_lengths`` keep
    # the document boundaries for the padding-free collator).
    return fit(config, output, model, tokenizer, train_rows, eval_rows, packing=False)


if __name__ == "__main__":
    recipe_main(run)
