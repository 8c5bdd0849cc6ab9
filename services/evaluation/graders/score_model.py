"""``score_model``: a judge model (any model the gateway serves) reads the rendered messages and
answers with a number in ``range``; the score is that number normalised to [0, 1].

The reply is untrusted text: the number is ``{"score": x}`` when the reply is such JSON, else
the first number in it. No number is the item's error ``judge_no_score``, one outside the range
``judge_out_of_range`` (score 0 in both cases: a judge that cannot follow its own scale is not
evidence either way).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from services.common.errors import FailedPrecondition
from services.evaluation.graders.base import (
    GradeResult,
    GraderResources,
    GraderSpec,
    Judge,
    Sample,
    check_fields,
    missing_result,
)
from services.evaluation.graders.json_check import strip_fence
from services.evaluation.sampling import SamplingConfig
from services.evaluation.templates import MissingField, Template, render

JUDGE_NO_SCORE = "judge_no_score"
JUDGE_OUT_OF_RANGE = "judge_out_of_range"
JUDGE_FAILED = "judge_failed"
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_SCORE_KEY = re.compile(r'"score"\s*:\s*(' + _NUMBER.pattern + ")")


class JudgeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Template


class ScoreModelSpec(GraderSpec):
    type: Literal["score_model"]
    model: str = Field(min_length=1, max_length=200)
    input: list[JudgeMessage] = Field(min_length=1)
    range: tuple[float, float] = (0.0, 1.0)
    pass_threshold: float | None = None
    sampling_params: SamplingConfig = Field(default_factory=SamplingConfig)

    @field_validator("range")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(v) for v in value) or value[0] >= value[1]:
            raise ValueError(f"range must be [min, max] with min < max, got {list(value)}")
        return value

    @field_validator("pass_threshold")
    @classmethod
    def _threshold_in_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        low, high = info.data.get("range", (value, value))  # absent: range itself was refused
        if value is not None and not low <= value <= high:
            raise ValueError(f"pass_threshold {value:g} is outside range [{low:g}, {high:g}]")
        return value


def judge_score(reply: str) -> float | None:
    """The number a judge's reply gives, or None."""
    text = strip_fence(reply)
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        value = document.get("score")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    if isinstance(document, int | float) and not isinstance(document, bool):
        return float(document)
    keyed = _SCORE_KEY.search(text)
    found = keyed.group(1) if keyed else (m.group(0) if (m := _NUMBER.search(text)) else None)
    if found is None:
        return None
    value = float(found)
    return value if math.isfinite(value) else None


class ScoreModelGrader:
    spec_model = ScoreModelSpec

    def __init__(self, spec: ScoreModelSpec, resources: GraderResources) -> None:
        if resources.judge is None:
            raise FailedPrecondition(
                f"grader {spec.name!r} needs a judge model; none is reachable",
                code="judge_missing",
            )
        self.spec = spec
        self.name = spec.name
        self.judge: Judge = resources.judge
        self.sampling = spec.sampling_params

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult:
        try:
            messages = [
                {"role": m.role, "content": render(m.content, item, sample.output_text)}
                for m in self.spec.input
            ]
        except MissingField as exc:
            return missing_result(exc)
        try:
            reply = await self.judge.complete(self.spec.model, messages, self.sampling)
        except Exception as exc:  # noqa: BLE001 - the judge is outside: its failure is the item's
            return GradeResult(
                0.0, passed=False, error=JUDGE_FAILED, detail=f"{type(exc).__name__}: {exc}"[:300]
            )
        value = judge_score(reply)
        low, high = self.spec.range
        if value is None:
            return GradeResult(
                0.0,
                passed=False,
                error=JUDGE_NO_SCORE,
                detail=f"no number in the judge's reply {reply[:100]!r}",
            )
        if not low <= value <= high:
            return GradeResult(
                0.0,
                passed=False,
                error=JUDGE_OUT_OF_RANGE,
                detail=f"the judge said {value:g}, outside [{low:g}, {high:g}]",
            )
        threshold = self.spec.pass_threshold
        passed = None if threshold is None else value >= threshold
        return GradeResult((value - low) / (high - low), passed=passed)

    def check_items(self, items: list[dict[str, Any]]) -> None:
        check_fields(self.name, [m.content for m in self.spec.input], items)
