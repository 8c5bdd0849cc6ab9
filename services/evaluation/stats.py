"""Confidence intervals for an eval's mean score: a percentile bootstrap over items, with a fixed
seed so the same results give the same interval (a record must not change when re-read)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CHUNK_CELLS = 2_000_000  # resample in blocks: resamples x items int64 indexes stay ~16 MB


def bootstrap_ci(
    scores: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """(low, high) of the ``level`` percentile-bootstrap interval of the mean of ``scores``.
    No scores: (0, 0); one: (s, s), since one item says nothing about the spread."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(scores, dtype=np.float64)
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    if n == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    per_block = max(1, _CHUNK_CELLS // n)
    means = []
    for start in range(0, resamples, per_block):
        rows = min(per_block, resamples - start)
        means.append(values[rng.integers(0, n, size=(rows, n))].mean(axis=1))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(np.concatenate(means), [alpha, 1.0 - alpha])
    return float(low), float(high)
