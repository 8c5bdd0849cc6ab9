"""Execution accuracy for text-to-SQL: run predicted and gold SQL, compare the result rows.

A prediction is right when its rows equal the gold rows: as lists when the question asks for an
order (`ordered`), as multisets otherwise; column names are ignored, column order is not. Model
output is untrusted, so it runs on a read-only connection (`mode=ro`), behind an authorizer that
allows reading only, with a time limit, and only its first statement, which must be a SELECT or
WITH query. Anything that fails to run counts as wrong.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# The SQL handling is the sql_execution grader's: one implementation of "what the model's SQL
# is, how it runs safely, when two results are equal" for the demo and for eval jobs.
from services.evaluation.graders.sql_execution import (
    MAX_ROWS,
    TIMEOUT_S,
    connect_readonly,
    extract_sql,
    run_query,
    same_result,
)

__all__ = [
    "MAX_ROWS",
    "TIMEOUT_S",
    "EvalReport",
    "ExampleResult",
    "connect_readonly",
    "execution_accuracy",
    "extract_sql",
    "run_query",
    "same_result",
]


@dataclass
class ExampleResult:
    question: str
    family: str
    gold_sql: str
    prediction: str  # raw model output
    sql: str  # what was executed, after extract_sql
    correct: bool
    error: str | None = None


@dataclass
class EvalReport:
    accuracy: float
    correct: int
    total: int
    per_family: dict[str, float] = field(default_factory=dict)
    results: list[ExampleResult] = field(default_factory=list)

    def summary(self) -> str:
        fams = ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.per_family.items()))
        return f"execution accuracy {self.accuracy:.3f} ({self.correct}/{self.total}); {fams}"


def execution_accuracy(db_path: str | Path, predictions: list[str],
                       gold: list[dict]) -> EvalReport:
    """Score `predictions` (raw model replies) against `gold` records (sql, ordered, family)."""
    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} predictions for {len(gold)} gold examples")
    conn = connect_readonly(db_path)
    results: list[ExampleResult] = []
    try:
        for raw, g in zip(predictions, gold, strict=True):
            gold_rows = run_query(conn, g["sql"])  # a failing gold query is a dataset bug: raise
            sql, error, correct = extract_sql(raw or ""), None, False
            try:
                correct = same_result(run_query(conn, sql), gold_rows, bool(g.get("ordered")))
            except (sqlite3.Error, ValueError, OverflowError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            results.append(ExampleResult(g.get("question", ""), g.get("family", "all"),
                                         g["sql"], raw, sql, correct, error))
    finally:
        conn.close()
    by_family: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_family[r.family].append(r.correct)
    n_ok = sum(r.correct for r in results)
    return EvalReport(accuracy=n_ok / len(results) if results else 0.0, correct=n_ok,
                      total=len(results),
                      per_family={f: sum(v) / len(v) for f, v in sorted(by_family.items())},
                      results=results)
