"""Execution accuracy for text-to-SQL: run predicted and gold SQL, compare the result rows.

A prediction is right when its rows equal the gold rows: as lists when the question asks for an
order (`ordered`), as multisets otherwise; column names are ignored, column order is not. Model
output is untrusted, so it runs on a read-only connection (`mode=ro`), behind an authorizer that
allows reading only, with a time limit, and only its first statement, which must be a SELECT or
WITH query. Anything that fails to run counts as wrong.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT_S = 2.0
MAX_ROWS = 100_000  # a runaway cross join must not exhaust memory before the timeout fires
# Authorizer actions a read-only query needs; everything else (writes, ATTACH, PRAGMA) is denied.
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
            getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
_FENCE = re.compile(r"```[ \t]*(?:sqlite|sql)?[ \t]*\n?(.*?)(?:```|\Z)", re.S | re.I)
_LABEL = re.compile(r"^(?:sqlite|sql|query|answer)\s*:\s*", re.I)


def extract_sql(text: str) -> str:
    """The first SQL statement in a model reply: fences, "SQL:" labels, prose before the query
    and everything from the first ';' outside quotes removed."""
    text = text.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    text = _LABEL.sub("", text).strip().strip("`").strip()
    if not _is_query(text):  # "Here is the query: SELECT ..." -> start at the query itself
        start = re.search(r"\b(SELECT|WITH)\b", text, re.I)
        text = text[start.start():] if start else text
    quote = None
    for i, ch in enumerate(text):  # cut at the first ';' outside a quoted literal/identifier
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch == ";":
            return text[:i].strip()
    return text.strip()


def _is_query(sql: str) -> bool:
    body = re.sub(r"^(\s|--[^\n]*\n|/\*.*?\*/)*", "", sql, flags=re.S)
    return re.match(r"(SELECT|WITH)\b", body, re.I) is not None


def connect_readonly(db_path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    conn.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in _ALLOWED
                        else sqlite3.SQLITE_DENY)
    return conn


def run_query(conn: sqlite3.Connection, sql: str, timeout_s: float = TIMEOUT_S) -> list[tuple]:
    """Rows of one read-only query; raises ValueError/sqlite3.Error when it is refused or fails."""
    if not _is_query(sql):
        raise ValueError("only a single SELECT or WITH query is allowed")
    deadline = time.monotonic() + timeout_s
    # Called every N SQLite VM steps; a non-zero return aborts the query ("interrupted").
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        rows = conn.execute(sql).fetchmany(MAX_ROWS + 1)
    finally:
        conn.set_progress_handler(None, 0)
    if len(rows) > MAX_ROWS:
        raise ValueError(f"more than {MAX_ROWS} rows")
    return rows


def _norm(rows: list[tuple]) -> list[tuple]:
    # AVG and other float results may differ in the last bits between equivalent queries.
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def same_result(pred: list[tuple], gold: list[tuple], ordered: bool) -> bool:
    pred, gold = _norm(pred), _norm(gold)
    return pred == gold if ordered else Counter(pred) == Counter(gold)


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
