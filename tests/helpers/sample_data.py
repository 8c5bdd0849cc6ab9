"""A small synthetic chat dataset (country -> capital answers in a fixed format), for the
tests and the benchmark: short, learnable in a few dozen steps, and with a mix of lengths."""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Norway", "Oslo"),
    ("Chile", "Santiago"),
    ("India", "New Delhi"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Cuba", "Havana"),
    ("Ireland", "Dublin"),
]


def chat_examples(n: int, seed: int = 0, *, long_every: int = 0) -> list[dict]:
    """``n`` conversations; with ``long_every`` k, every k-th one carries a long preamble
    (mixed lengths, where packing pays)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        country, capital = rng.choice(CAPITALS)
        question = f"What is the capital of {country}?"
        if long_every and i % long_every == 0:
            question = ("Please answer briefly. " * 12) + question
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": f"CAPITAL: {capital.upper()}"},
                ]
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
