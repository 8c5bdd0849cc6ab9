"""``string_check``: compare two rendered templates (OpenAI's operations: eq, ne, and like /
ilike = the reference is a substring of the input, ilike ignoring case). Score 1 or 0."""

from __future__ import annotations

from typing import Any, Literal

from services.evaluation.graders.base import (
    GradeResult,
    GraderResources,
    GraderSpec,
    Sample,
    check_fields,
    missing_result,
)
from services.evaluation.templates import MissingField, Template, render


class StringCheckSpec(GraderSpec):
    type: Literal["string_check"]
    input: Template
    reference: Template
    operation: Literal["eq", "ne", "like", "ilike"]


def compare(value: str, reference: str, operation: str) -> bool:
    if operation == "eq":
        return value == reference
    if operation == "ne":
        return value != reference
    if operation == "like":
        return reference in value
    return reference.casefold() in value.casefold()  # ilike


class StringCheckGrader:
    spec_model = StringCheckSpec

    def __init__(self, spec: StringCheckSpec, resources: GraderResources) -> None:
        self.spec = spec
        self.name = spec.name

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult:
        try:
            value = render(self.spec.input, item, sample.output_text)
            reference = render(self.spec.reference, item, sample.output_text)
        except MissingField as exc:
            return missing_result(exc)
        ok = compare(value, reference, self.spec.operation)
        return GradeResult(float(ok), passed=ok)

    def check_items(self, items: list[dict[str, Any]]) -> None:
        check_fields(self.name, [self.spec.input, self.spec.reference], items)
