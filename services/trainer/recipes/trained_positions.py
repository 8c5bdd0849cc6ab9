"""The LM head and the loss only where a label is trained, on every device.

TRL 1.16's ``SFTTrainer`` replaces the model's logits by a fused, tiled log-probability kernel
(``add_fused_lm_head``: the [tokens x vocab] logits never exist) but projects only the positions
whose next-token label is not -100 on Triton devices. Elsewhere, the CPU included, it projects
every position, prompt and padding alike, and zeroes the unwanted ones afterwards: on Neuron a
number of positions that changes every batch would recompile the graph each time. PyTorch eager
on a CPU has no such cost, so tuneplex compacts there too. On the demo's chats, where 44% of
the tokens are trained, the head's matmuls and softmax shrink by more than half; the loss and
gradients are the same numbers (the unwanted positions were zeroed either way).

TRL reads the choice from ``trl.trainer.utils._use_triton`` at call time; the pin in
pyproject.toml holds it still, and ``tests/unit/test_trainer_batching.py`` fails if a TRL
upgrade moves it (it counts the rows that reach the kernel).
"""

from __future__ import annotations

import trl.trainer.utils as _trl_utils


def _compact_everywhere(device) -> bool:
    """Project only trained positions: what TRL does on CUDA, now also on the CPU."""
    return device.type in ("cpu", "cuda", "xpu")


def score_trained_positions_only() -> None:
    """Make every ``SFTTrainer`` in this process compute the LM head on trained positions only.
    Idempotent; a worker process trains one job, so process-wide is the job's scope."""
    if not hasattr(_trl_utils, "_use_triton"):
        raise RuntimeError(
            "trl.trainer.utils._use_triton is gone: TRL changed how its fused LM head picks "
            "positions; update services/trainer/recipes/trained_positions.py"
        )
    _trl_utils._use_triton = _compact_everywhere
