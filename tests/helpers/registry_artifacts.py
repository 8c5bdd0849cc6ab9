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


def eval_line(question: str = "2+2?", answer: str = "4", **fields) -> str:
    """One eval-set item: a user turn to answer and its reference field(s)."""
    item = {"input": [{"role": "user", "content": question}], "answer": answer, **fields}
    return json.dumps(item)


def write_sqlite(path: Path) -> Path:
    """A small real SQLite database (one table, two rows)."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO items (name) VALUES (?)", [("a",), ("b",)])
    return path


EXACT_GRADERS = [
    {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "eq",
    }
]


def write_evaluation(
    out: Path,
    *,
    model: str,
    eval_set: str,
    score: float,
    ci: tuple[float, float] | None = None,
    model_kind: str = "adapter",
    graders: list[dict] | None = None,
    num_items: int = 4,
    overrides: dict | None = None,
) -> Path:
    """An EVALUATION folder (summary.json + results.jsonl) as the eval worker writes it, with
    the given score; ``overrides`` replace summary fields (to write a broken one)."""
    from services.common.eval_summary import (
        RESULTS_FILE,
        SUMMARY_FILE,
        EvalSummary,
        graders_digest,
    )
    from services.evaluation.runner import ItemResult
    from services.evaluation.summary import write_record

    graders = graders if graders is not None else EXACT_GRADERS
    low, high = ci if ci is not None else (max(0.0, score - 0.1), min(1.0, score + 0.1))
    summary = EvalSummary(
        model=model,
        model_kind=model_kind,
        eval_set=eval_set,
        graders=graders,
        graders_sha256=graders_digest(graders),
        sampling={"temperature": 0.0, "max_tokens": 16, "top_p": 1.0, "seed": 42},
        backend="gateway",
        score=score,
        ci_low=low,
        ci_high=high,
        num_items=num_items,
        num_errors=0,
        grader_scores={g["name"]: score for g in graders},
        seconds=1.0,
        items_per_second=float(num_items),
        created_at="2026-01-01T00:00:00Z",
    )
    results = [
        ItemResult(i, "4", score, {g["name"]: score for g in graders}, {}, None, 0.1, 1)
        for i in range(num_items)
    ]
    write_record(out, summary, results)  # the eval worker's own writer
    if overrides:
        written = json.loads((out / SUMMARY_FILE).read_text())
        (out / SUMMARY_FILE).write_text(json.dumps({**written, **overrides}))
    assert (out / RESULTS_FILE).is_file()
    return out
