"""Reference outputs for merged-model tests: base + adapter unmerged (PEFT) vs a merged model,
in fp32 with transformers, on a fixed set of chat prompts, greedy."""

from __future__ import annotations

from pathlib import Path

PROMPTS = (
    "What is 2+2?",
    "Name a colour of the sky.",
    "Write one SQL query that counts the rows of table users.",
    "Translate 'good morning' to French.",
    "List three fruits.",
)


def load_fp32(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def base_plus_adapter(base_dir: Path, adapter_dir: Path):
    """The adapter on its base, unmerged: what the merged model must reproduce."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_fp32(base_dir), adapter_dir).eval()


def chat_ids(tokenizer, prompt: str):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]


def greedy(model, tokenizer, prompts=PROMPTS, max_new_tokens: int = 16) -> list[list[int]]:
    """Greedy continuation token ids per prompt."""
    import torch

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = chat_ids(tokenizer, prompt)
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
            out.append(generated[0, ids.shape[1] :].tolist())
    return out


def max_logit_diff(a, b, tokenizer, prompts=PROMPTS) -> float:
    """Largest |logit| difference of two models over every position of every prompt."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for prompt in prompts:
            ids = chat_ids(tokenizer, prompt)
            diff = (a(input_ids=ids).logits - b(input_ids=ids).logits).abs().max().item()
            worst = max(worst, diff)
    return worst
