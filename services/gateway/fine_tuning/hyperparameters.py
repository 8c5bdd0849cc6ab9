"""OpenAI's `"auto"` hyper-parameters, resolved by one documented rule.

For a training file of n examples (the registry's `DatasetInfo.num_examples`):

- `batch_size` = the largest power of two <= min(8, n // 8), at least 1: about eight batches
  per epoch on a small file, never more than 8 examples per step (a CPU's worth); for DPO at
  most 4 pairs, since each pair is two sequences plus a reference pass (the trainer's memory
  pre-flight refuses DPO batch 8 x 512 tokens of the default model on a 24 GiB machine);
- `n_epochs` = min(10, max(1, ceil(400 / n))): about 400 examples seen in all, so a small
  file is learnt and a job stays short on a CPU; a file of 400 examples or more gets 1 epoch;
- `learning_rate_multiplier` = 1.0, times the trainer's default learning rate for the method
  (2e-4 for adapters, 2e-5 for `full`);
- `beta` (DPO) = 0.1, the trainer's `dpo_beta` default.

A number given instead of `"auto"` is used as it is. The job object reports the numbers used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AUTO = "auto"
MAX_AUTO_BATCH = 8
MAX_AUTO_DPO_BATCH = 4
EXAMPLES_SEEN = 400
MAX_AUTO_EPOCHS = 10
DEFAULT_BETA = 0.1


def auto_batch_size(num_examples: int, *, dpo: bool = False) -> int:
    cap = min(MAX_AUTO_DPO_BATCH if dpo else MAX_AUTO_BATCH, num_examples // 8)
    size = 1
    while size * 2 <= cap:
        size *= 2
    return size


def auto_epochs(num_examples: int) -> int:
    return min(MAX_AUTO_EPOCHS, max(1, math.ceil(EXAMPLES_SEEN / max(1, num_examples))))


@dataclass(frozen=True)
class Resolved:
    """The hyper-parameters a job runs with, as numbers."""

    batch_size: int
    n_epochs: int
    learning_rate_multiplier: float
    beta: float | None = None

    def openai(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "n_epochs": self.n_epochs,
        }
        if self.beta is not None:
            out["beta"] = self.beta
        return out


def resolve(given: dict[str, object], num_examples: int, *, dpo: bool) -> Resolved:
    """`given` (OpenAI's hyperparameters object: numbers, `"auto"` or absent) as numbers."""

    def value(name: str, auto: float) -> float:
        raw = given.get(name)
        return auto if raw is None or raw == AUTO else float(raw)  # type: ignore[arg-type]

    return Resolved(
        batch_size=int(value("batch_size", auto_batch_size(num_examples, dpo=dpo))),
        n_epochs=int(value("n_epochs", auto_epochs(num_examples))),
        learning_rate_multiplier=value("learning_rate_multiplier", 1.0),
        beta=value("beta", DEFAULT_BETA) if dpo else None,
    )
