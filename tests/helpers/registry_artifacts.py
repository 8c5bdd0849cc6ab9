"""Small artifacts written from scratch for registry tests: adapters, models, datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

TINY_MODEL = "tiny-base"


def write_adapter(
    out: Path,
    *,
    rank: int = 4,
    base_model: str = TINY_MODEL,
    dtype=np.float32,
    poison: float | None = None,
    config: dict | None = None,
    size_bytes: int = 0,
    seed: int = 0,
) -> Path:
    """A PEFT-shaped LoRA folder. ``poison`` (nan/inf) lands in one lora_B element;
    ``size_bytes`` pads lora_A of one extra layer to make a big adapter."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, 64)).astype(dtype)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((64, rank)).astype(dtype)
    if size_bytes:
        cols = max(1, size_bytes // (4 * rank))
        tensors["base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"] = (
            rng.standard_normal((rank, cols), dtype=np.float32)
        )
    if poison is not None:
        key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        tensors[key][3, 1] = poison
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base_model,
        "use_dora": False,
        "use_rslora": False,
        "modules_to_save": None,
    }
    cfg.update(config or {})
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def write_model(out: Path) -> Path:
    """A minimal HF folder: config.json and a small safetensors file."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps(
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "float32"}
        )
    )
    save_file(
        {"model.embed_tokens.weight": np.ones((16, 8), np.float32)}, str(out / "model.safetensors")
    )
    return out


def chat_line(user: str = "hi", assistant: str = "hello") -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        }
    )


def write_dataset(path: Path, lines: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = lines if lines is not None else [chat_line(f"q{i}", f"a{i}") for i in range(5)]
    path.write_text("\n".join(lines) + "\n")
    return path
