"""Tiny but real PEFT IA3/LoHa/LoKr adapters on the base model, made by PEFT itself.

PEFT initialises these types to the identity (IA3's vectors are ones, LoHa's ``hada_w2_b`` and
LoKr's ``lokr_w1`` are zeros), so an adapter as PEFT makes it changes nothing. Every adapter
tensor is redrawn from a seeded generator, scaled so that greedy decoding visibly departs from
the base model without turning it into noise.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("IA3", "LOHA", "LOKR")
# Attention and feed-forward modules both: each has its own shape rule in the registry.
TARGETS = ("q_proj", "v_proj", "down_proj")
FEEDFORWARD = ("down_proj",)  # IA3 scales these modules' inputs, the others' outputs


def peft_config(kind: str, *, rank: int, targets: tuple[str, ...]):
    from peft import IA3Config, LoHaConfig, LoKrConfig

    if kind == "IA3":
        feedforward = [t for t in targets if t in FEEDFORWARD]
        return IA3Config(
            target_modules=list(targets), feedforward_modules=feedforward, task_type="CAUSAL_LM"
        )
    if kind == "LOHA":
        return LoHaConfig(r=rank, alpha=rank, target_modules=list(targets), task_type="CAUSAL_LM")
    if kind == "LOKR":
        return LoKrConfig(r=rank, alpha=rank, target_modules=list(targets), task_type="CAUSAL_LM")
    raise ValueError(f"unknown adapter kind {kind!r}; one of {KINDS}")


def make_peft_adapter(
    kind: str,
    base_model_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    rank: int = 8,
    targets: tuple[str, ...] = TARGETS,
) -> Path:
    """Save a ``kind`` ("IA3", "LOHA", "LOKR") adapter of ``base_model_dir`` in ``out_dir``."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, peft_config(kind, rank=rank, targets=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if kind == "IA3" and ".ia3_l." in name:
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen))
            elif ".hada_" in name or ".lokr_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    return out_dir
