"""``regex`` (ours): score 1 when a Python regular expression is found in the rendered input
(``re.search``); ``flags`` "i", "m", "s" are IGNORECASE, MULTILINE, DOTALL."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from services.evaluation.graders.base import (
    GradeResult,
    GraderResources,
    GraderSpec,
    Sample,
    check_fields,
    missing_result,
)
from services.evaluation.templates import MissingField, Template, render

FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


class RegexSpec(GraderSpec):
    type: Literal["regex"]
    input: Template = "{{sample.output_text}}"
    pattern: str
    flags: list[Literal["i", "m", "s"]] = Field(default_factory=list)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_pattern(value, [])  # IGNORECASE/MULTILINE/DOTALL never make a pattern invalid
        return value


def compile_pattern(pattern: str, flags: list[str]) -> re.Pattern[str]:
    bits = 0
    for flag in flags:
        bits |= FLAGS[flag]
    try:
        return re.compile(pattern, bits)
    except re.error as exc:
        raise ValueError(f"pattern is not a valid Python regular expression: {exc}") from None


class RegexGrader:
    spec_model = RegexSpec

    def __init__(self, spec: RegexSpec, resources: GraderResources) -> None:
        self.spec = spec
        self.name = spec.name
        self._pattern = compile_pattern(spec.pattern, list(spec.flags))

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult:
        try:
            value = render(self.spec.input, item, sample.output_text)
        except MissingField as exc:
            return missing_result(exc)
        ok = self._pattern.search(value) is not None
        return GradeResult(float(ok), passed=ok)

    def check_items(self, items: list[dict[str, Any]]) -> None:
        check_fields(self.name, [self.spec.input], items)
