"""``sql_execution`` (ours): execution accuracy for text-to-SQL. The model's SQL and the item's
reference SQL run on the SQLite database the spec names; the answer is right when the rows are
equal: as lists when ``ordered``, as multisets otherwise (column names ignored, column order
not, floats rounded to 6 places).

Model output is untrusted: it runs on a read-only connection (``mode=ro``), behind an authorizer
that allows reading only, with a time limit (a progress handler) and a row cap, and only its
first statement, which must be a SELECT or WITH query. A prediction that writes or fails scores
0. A reference that is not one read-only query, or fails, means the eval set is broken: the
pre-flight refuses it and grading reports ``reference_invalid``.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator

from services.common.errors import FailedPrecondition
from services.evaluation.graders.base import (
    GradeResult,
    GraderResources,
    GraderSpec,
    Sample,
    check_fields,
    missing_result,
    preflight_error,
)
from services.evaluation.templates import MissingField, Template, check_template, render, resolve

TIMEOUT_S = 2.0
MAX_ROWS = 100_000  # a runaway cross join must not exhaust memory before the timeout fires
REFERENCE_INVALID = "reference_invalid"
Row = tuple[Any, ...]
# Authorizer actions a read-only query needs; everything else (writes, ATTACH, PRAGMA) is denied.
_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
_FENCE = re.compile(r"```[ \t]*(?:sqlite|sql)?[ \t]*\n?(.*?)(?:```|\Z)", re.S | re.I)
_LABEL = re.compile(r"^(?:sqlite|sql|query|answer)\s*:\s*", re.I)
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


def split_statement(text: str) -> tuple[str, str]:
    """``text`` cut at its first ';' outside a quoted literal or identifier: (first, rest)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch == ";":
            return text[:i].strip(), text[i + 1 :]
    return text.strip(), ""


def extract_sql(text: str) -> str:
    """The first SQL statement in a model reply: fences, "SQL:" labels, prose before the query
    and everything from the first ';' outside quotes removed."""
    text = text.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    text = _LABEL.sub("", text).strip().strip("`").strip()
    if not is_query(text):  # "Here is the query: SELECT ..." -> start at the query itself
        start = re.search(r"\b(SELECT|WITH)\b", text, re.I)
        text = text[start.start() :] if start else text
    return split_statement(text)[0]


def is_query(sql: str) -> bool:
    body = re.sub(r"^(\s|--[^\n]*\n|/\*.*?\*/)*", "", sql, flags=re.S)
    return re.match(r"(SELECT|WITH)\b", body, re.I) is not None


def _authorize(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED else sqlite3.SQLITE_DENY


def connect_readonly(db_path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    conn.set_authorizer(_authorize)
    return conn


def run_query(conn: sqlite3.Connection, sql: str, timeout_s: float = TIMEOUT_S) -> list[Row]:
    """Rows of one read-only query; raises ValueError/sqlite3.Error when it is refused or fails."""
    if not is_query(sql):
        raise ValueError("only a single SELECT or WITH query is allowed")
    deadline = time.monotonic() + timeout_s
    # Called every N SQLite VM steps; a non-zero return aborts the query ("interrupted").
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        rows: list[Row] = conn.execute(sql).fetchmany(MAX_ROWS + 1)
    finally:
        conn.set_progress_handler(None, 0)
    if len(rows) > MAX_ROWS:
        raise ValueError(f"more than {MAX_ROWS} rows")
    return rows


def _norm(rows: Sequence[Row]) -> list[Row]:
    # AVG and other float results may differ in the last bits between equivalent queries.
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def same_result(pred: Sequence[Row], gold: Sequence[Row], ordered: bool) -> bool:
    p, g = _norm(pred), _norm(gold)
    return p == g if ordered else Counter(p) == Counter(g)


def reference_query(text: str) -> str:
    """The reference as one statement; ValueError when it holds more than one (a write hidden
    after a SELECT must not be cut away silently, as a prediction's would be)."""
    first, rest = split_statement(text.strip())
    if re.sub(r"(\s|--[^\n]*(\n|\Z)|/\*.*?\*/)", "", rest, flags=re.S):
        raise ValueError("the reference holds more than one statement")
    return first


def as_ordered(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"ordered must be true or false, got {value!r}")


def _ordered_spec(value: object) -> bool | str:
    # One validator rather than a bool | str union, so an error names "ordered" itself.
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return check_template(value)
    raise ValueError('ordered is true, false or a template such as "{{item.ordered}}"')


class SqlExecutionSpec(GraderSpec):
    type: Literal["sql_execution"]
    input: Template = "{{sample.output_text}}"
    reference: Template
    database: str = Field(min_length=1, max_length=200)
    ordered: Annotated[bool | str, PlainValidator(_ordered_spec)] = False
    timeout_s: float = Field(TIMEOUT_S, gt=0.0, le=60.0)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class SqlExecutionGrader:
    spec_model = SqlExecutionSpec

    def __init__(self, spec: SqlExecutionSpec, resources: GraderResources) -> None:
        if spec.database not in resources.databases:
            raise FailedPrecondition(
                f"grader {spec.name!r} needs the database {spec.database!r}, which was not "
                "provided",
                code="database_missing",
            )
        self.spec = spec
        self.name = spec.name
        self.db_path = resources.databases[spec.database]

    def _templates(self) -> list[str]:
        ordered = self.spec.ordered
        return [
            self.spec.input,
            self.spec.reference,
            *([ordered] if isinstance(ordered, str) else []),
        ]

    def _ordered(self, item: dict[str, Any], output_text: str) -> bool:
        ordered = self.spec.ordered
        if isinstance(ordered, bool):
            return ordered
        return as_ordered(resolve(ordered, item, output_text))

    def _reference_rows(self, conn: sqlite3.Connection, reference: str) -> list[Row]:
        return run_query(conn, reference_query(reference), self.spec.timeout_s)

    def _grade_sync(self, prediction: str, reference: str, ordered: bool) -> GradeResult:
        conn = connect_readonly(self.db_path)
        try:
            try:
                gold = self._reference_rows(conn, reference)
            except (sqlite3.Error, ValueError, OverflowError) as exc:
                return GradeResult(
                    0.0, passed=False, error=REFERENCE_INVALID, detail=_error_text(exc)
                )
            try:
                rows = run_query(conn, extract_sql(prediction), self.spec.timeout_s)
            except (sqlite3.Error, ValueError, OverflowError) as exc:
                return GradeResult(0.0, passed=False, detail=_error_text(exc))
        finally:
            conn.close()
        ok = same_result(rows, gold, ordered)
        return GradeResult(float(ok), passed=ok)

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult:
        try:
            prediction = render(self.spec.input, item, sample.output_text)
            reference = render(self.spec.reference, item, sample.output_text)
            ordered_value = self._ordered(item, sample.output_text)
        except MissingField as exc:
            return missing_result(exc)
        except ValueError as exc:
            return GradeResult(0.0, passed=False, error=REFERENCE_INVALID, detail=str(exc))
        # sqlite blocks; the event loop keeps sampling other items meanwhile.
        return await asyncio.to_thread(self._grade_sync, prediction, reference, ordered_value)

    def check_items(self, items: list[dict[str, Any]]) -> None:
        check_fields(self.name, self._templates(), items)
        conn = connect_readonly(self.db_path)
        try:
            for n, item in enumerate(items, start=1):
                try:
                    self._ordered(item, "")
                except ValueError as exc:
                    raise preflight_error(
                        n, f"grader {self.name!r}: {exc}", REFERENCE_INVALID
                    ) from None
                try:
                    self._reference_rows(conn, render(self.spec.reference, item, ""))
                except (sqlite3.Error, ValueError, OverflowError) as exc:
                    why = (
                        f"grader {self.name!r}: the reference is not one read-only query that "
                        f"runs on {self.spec.database!r} ({_error_text(exc)})"
                    )
                    raise preflight_error(n, why, REFERENCE_INVALID) from None
        finally:
            conn.close()
