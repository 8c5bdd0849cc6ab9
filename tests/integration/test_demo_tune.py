"""`python -m demo.tune`: the tuning sweep trains with the real recipe and scores on both
held-out sets (the generated split and the hand-written questions)."""

from __future__ import annotations

import argparse
import json

import pytest
from pydantic import ValidationError

from demo.shop_sql.generate import handwritten_examples
from demo.story import DemoConfig
from demo.tune import Run, recipe_config, sweep


def test_run_parse():
    run = Run.parse("small:batch_size=4,learning_rate=2e-3,precision=bf16,packing=true")
    assert run == Run("small", {"batch_size": 4, "learning_rate": 2e-3, "precision": "bf16",
                                "packing": True})
    assert Run.parse("defaults:") == Run("defaults", {})
    for bad in ("max_steps=200", ":max_steps=2", "a:max_steps"):
        with pytest.raises(argparse.ArgumentTypeError):
            Run.parse(bad)


def test_unknown_field_fails_before_training(tmp_path):
    cfg = DemoConfig(home=tmp_path, train_examples=40, heldout_examples=5)
    with pytest.raises(ValidationError, match="max_step"):
        recipe_config(Run("typo", {"max_step": 5}), tmp_path, tmp_path, cfg, gpus=0)


def test_sweep_trains_and_scores(base_model_dir, tmp_path):
    cfg = DemoConfig(home=tmp_path, train_examples=40, heldout_examples=4, max_tokens=48,
                     bf16=False)
    lines: list[str] = []
    reports = sweep(base_model_dir, tmp_path, [Run("tiny", {"max_steps": 2, "lora_r": 4})],
                    base=True, cfg=cfg, say=lines.append)
    assert set(reports) == {"base", "tiny"}
    n_handwritten = len(handwritten_examples())
    for scores in reports.values():  # both held-out sets, for the base model too
        assert scores.heldout.total == 4 and scores.handwritten.total == n_handwritten
    assert lines[-1].startswith("== tiny {'max_steps': 2, 'lora_r': 4}")
    assert "/4), hand-written " in lines[-1] and f"/{n_handwritten});" in lines[-1]
    job = json.loads((tmp_path / "tiny" / "job.json").read_text())["training"]
    assert (job["max_steps"], job["lora_r"], job["lora_alpha"]) == (2, 4, 8.0)
    for name, n in (("heldout", 4), ("handwritten", n_handwritten)):
        rows = [json.loads(line) for line in (tmp_path / "tiny" / f"{name}.jsonl").open()]
        assert len(rows) == n and {"correct", "gold", "sql"} <= set(rows[0])
        # The summary a user reads is the per-question file's count, on both sets.
        scored = getattr(reports["tiny"], name)
        assert scored.correct == sum(r["correct"] for r in rows)
        assert scored.accuracy == scored.correct / n
    assert (tmp_path / "base" / "handwritten.jsonl").is_file()
    assert (tmp_path / "tiny" / "adapter" / "adapter_model.safetensors").is_file()
