"""An eval's record: ``summary.json`` (the scores the registry and the promotion gate read) and
``results.jsonl`` (every item's answer and grades), the two files of an EVALUATION version."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from services.common.eval_summary import RESULTS_FILE, SUMMARY_FILE, EvalSummary, graders_digest
from services.evaluation.runner import ItemResult
from services.evaluation.sampling import SamplingConfig
from services.evaluation.stats import bootstrap_ci

CI_LEVEL = 0.95


def _unit(value: float) -> float:
    # Means of scores in [0, 1] may stray by an ulp; the schema bounds them exactly.
    return min(1.0, max(0.0, value))


def summarize(
    results: list[ItemResult],
    graders: list[dict[str, Any]],
    *,
    model: str,
    model_kind: str,
    eval_set: str,
    databases: list[str],
    sampling: SamplingConfig,
    backend: str,
    job_id: str,
    seconds: float,
) -> EvalSummary:
    scores = [r.score for r in results]
    n = len(results)
    low, high = bootstrap_ci(scores, level=CI_LEVEL)
    names = [g["name"] for g in graders]
    per_grader = {
        name: _unit(sum(r.grader_scores.get(name, 0.0) for r in results) / n) if n else 0.0
        for name in names
    }
    return EvalSummary.model_validate(
        {
            "model": model,
            "model_kind": model_kind,
            "eval_set": eval_set,
            "databases": list(databases),
            "graders": graders,
            "graders_sha256": graders_digest(graders),
            "sampling": sampling.model_dump(mode="json"),
            "backend": backend,
            "score": _unit(sum(scores) / n) if n else 0.0,
            "ci_low": _unit(low),
            "ci_high": _unit(high),
            "ci_level": CI_LEVEL,
            "num_items": n,
            "num_errors": sum(1 for r in results if r.error),
            "grader_scores": per_grader,
            "job_id": job_id,
            "seconds": max(0.0, seconds),
            "items_per_second": n / seconds if seconds > 0 else 0.0,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_record(folder: Path, summary: EvalSummary, results: list[ItemResult]) -> None:
    """folder/summary.json and folder/results.jsonl (results by index)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps(asdict(r), ensure_ascii=False) + "\n"
        for r in sorted(results, key=lambda r: r.index)
    )
    _write_atomically(folder / RESULTS_FILE, lines)
    _write_atomically(folder / SUMMARY_FILE, summary.model_dump_json(indent=2) + "\n")
