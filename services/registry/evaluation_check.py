"""What an EVALUATION upload must hold: ``summary.json`` (one ``EvalSummary``, the schema the
eval worker writes) and ``results.jsonl`` (one JSON object per graded item, as many as the
summary counts). The summary becomes the version's ``EvaluationInfo``, which the promotion gate
compares, so it is parsed strictly: a summary the gate would misread is refused on upload.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from services.common.errors import InvalidArgument
from services.common.eval_summary import RESULTS_FILE, SUMMARY_FILE, EvalSummary, graders_digest
from services.common.stubs import registry_pb2
from services.registry.jsonl_stream import LineSplitter

MODEL_KINDS = {
    "adapter": registry_pb2.ARTIFACT_KIND_ADAPTER,
    "model": registry_pb2.ARTIFACT_KIND_MODEL,
}
# One result line holds an item's output and scores; anything far bigger is not one.
MAX_RESULT_LINE_BYTES = 16 * 1024 * 1024


class ResultsCheck:
    """Counts the lines of ``results.jsonl`` as they stream, each a JSON object."""

    def __init__(self, path: str = RESULTS_FILE):
        self.path = path
        self.num_items = 0
        self._line = 0
        self._lines = LineSplitter(self._check_line, MAX_RESULT_LINE_BYTES, self._too_long)

    def feed(self, data: bytes) -> None:
        self._lines.feed(data)

    def finish(self) -> None:
        self._lines.finish()

    def _too_long(self) -> None:
        raise self._fail(self._line + 1, f"line is over {MAX_RESULT_LINE_BYTES} bytes")

    def _fail(self, line: int, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.path} line {line}: {why}", param="files")

    def _check_line(self, raw: bytes) -> None:
        self._line += 1
        if not raw.strip():
            return
        try:
            record = json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise self._fail(self._line, f"invalid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise self._fail(self._line, "each line must be a JSON object (one item's result)")
        self.num_items += 1


def parse_summary(value: dict[str, Any]) -> EvalSummary:
    """``summary.json`` as an ``EvalSummary``; a field that breaks the schema is named."""
    try:
        summary = EvalSummary.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InvalidArgument(
            f"{SUMMARY_FILE}: field {where!r}: {first['msg']}", param="files"
        ) from None
    if graders_digest(summary.graders) != summary.graders_sha256:
        raise InvalidArgument(
            f"{SUMMARY_FILE}: graders_sha256 is not the sha256 of its graders: the scores "
            "could be compared with another grader spec's",
            param="files",
        )
    return summary


def evaluation_info(summary: EvalSummary, num_results: int) -> registry_pb2.EvaluationInfo:
    if num_results != summary.num_items:
        raise InvalidArgument(
            f"{RESULTS_FILE} has {num_results} results but {SUMMARY_FILE} counts "
            f"{summary.num_items} items",
            param="files",
        )
    return registry_pb2.EvaluationInfo(
        model_kind=MODEL_KINDS[summary.model_kind],
        model=summary.model,
        eval_set=summary.eval_set,
        score=summary.score,
        ci_low=summary.ci_low,
        ci_high=summary.ci_high,
        num_items=summary.num_items,
        num_errors=summary.num_errors,
        graders_sha256=summary.graders_sha256,
        grader_scores=summary.grader_scores,
    )
