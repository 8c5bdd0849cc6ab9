"""DeepSpeed ZeRO configs for multi-GPU launches. ``"auto"`` values are filled by the HF
Trainer's DeepSpeed integration from the training arguments, so batch size, accumulation,
clipping and precision are stated once, in the spec."""

from __future__ import annotations

import json
from pathlib import Path


def zero_config(stage: int) -> dict:
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage must be 2 or 3, not {stage}")
    zero: dict = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # Save a consolidated 16-bit state dict so the adapter/model folder is usable as is.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    else:
        zero["allgather_bucket_size"] = 5e8
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }


def write_zero_config(stage: int, path: Path) -> Path:
    path.write_text(json.dumps(zero_config(stage), indent=2))
    return path
