"""Supervised fine-tuning recipe: LoRA, DoRA, QLoRA, IA3, LoHa, LoKr or full fine-tuning of a
chat model.

    python -m services.trainer.recipes.sft --config job.json --output DIR

1. validate: render the first example with the model's own chat template and refuse a dataset
   whose assistant mask is empty or covers every token;
2. setup: tokenizer, model (4-bit for qlora), the PEFT adapter (``common.peft_config``:
   LoRA/DoRA with rsLoRA and the LoRA+ optimizer, IA3, LoHa, LoKr);
3. train: TRL ``SFTTrainer`` on pre-tokenized rows whose labels are masked to the assistant
   turns (unless ``train_on_prompt``), with packing, NEFTune, eval and early stopping as asked,
   resuming from the newest complete checkpoint;
   Packing keeps the assistant mask honest: TRL's BFD packing carries each row's labels along
   and restarts position ids per row, from which transformers builds a block-diagonal
   attention mask, so packed rows neither attend to each other nor train on prompts.
4. save: adapter (or full weights) + tokenizer and chat template, training report, loss curve.
"""

from __future__ import annotations

from pathlib import Path

from services.trainer.recipes.chat_data import tokenize_chat_file
from services.trainer.recipes.common import RecipeConfig, fit, load_model, recipe_main
from services.trainer.worker.protocol import emit


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run(config: RecipeConfig, output: Path) -> dict:
    """Fine-tune a chat model on a JSONL chat dataset."""
    t = config.training
    tokenizer = load_tokenizer(config.model_dir)
    train_rows = tokenize_chat_file(
        config.train_file, tokenizer, t.max_seq_length, t.train_on_prompt
    )
    eval_rows = None
    if config.eval_file:
        eval_rows = tokenize_chat_file(
            config.eval_file,
            tokenizer,
            t.max_seq_length,
            t.train_on_prompt,
            param="training.validation_dataset",
        )
    first = train_rows[0]
    emit(
        "log",
        message=f"{len(train_rows)} examples; the first has {len(first['input_ids'])} "
        f"tokens, {sum(first['assistant_masks'])} of them trained on",
    )
    model = load_model(t, config.model_dir)
    return fit(config, output, model, tokenizer, train_rows, eval_rows, packing=t.packing)


if __name__ == "__main__":
    recipe_main(run)
