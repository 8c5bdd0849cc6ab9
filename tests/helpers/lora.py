"""Tiny but real PEFT LoRA adapters on the base model, for gateway tests and benchmarks.

The lora_B matrices start at zero (an adapter that changes nothing), so they are filled with
seeded noise large enough that greedy decoding visibly departs from the base model.
"""

from __future__ import annotations

from pathlib import Path

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def make_lora_adapter(
    base_model_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    rank: int = 8,
    scale: float = 0.2,
    targets: tuple[str, ...] = TARGETS,
    use_dora: bool = False,
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    torch.manual_seed(seed)  # PEFT draws lora_A from the global generator: same seed, same adapter
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(targets),
        task_type="CAUSAL_LM",
        use_dora=use_dora,
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    return out_dir
