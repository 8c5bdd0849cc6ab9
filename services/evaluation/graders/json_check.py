"""``json`` (ours): score 1 when the rendered input parses as JSON (after taking it out of a
``` fence) and, when the spec gives a JSON Schema, validates against it (jsonschema)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
from jsonschema.exceptions import SchemaError
from pydantic import ConfigDict, Field, field_validator

from services.evaluation.graders.base import (
    GradeResult,
    GraderResources,
    GraderSpec,
    Sample,
    check_fields,
    missing_result,
)
from services.evaluation.templates import MissingField, Template, render

_FENCE = re.compile(r"^```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.S)


class JsonSpec(GraderSpec):
    # "schema" is the key users write; as a field name it would shadow BaseModel.schema().
    model_config = ConfigDict(populate_by_name=True)

    type: Literal["json"]
    input: Template = "{{sample.output_text}}"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value


def strip_fence(text: str) -> str:
    text = text.strip()
    fenced = _FENCE.match(text)
    return fenced.group(1).strip() if fenced else text


class JsonGrader:
    spec_model = JsonSpec

    def __init__(self, spec: JsonSpec, resources: GraderResources) -> None:
        self.spec = spec
        self.name = spec.name
        schema = spec.json_schema
        self._validator = (
            None if schema is None else jsonschema.validators.validator_for(schema)(schema)
        )

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult:
        try:
            value = render(self.spec.input, item, sample.output_text)
        except MissingField as exc:
            return missing_result(exc)
        try:
            document = json.loads(strip_fence(value))
        except ValueError as exc:
            return GradeResult(0.0, passed=False, detail=f"not JSON: {exc}")
        if self._validator is not None:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(document))
            if error is not None:
                return GradeResult(0.0, passed=False, detail=f"schema: {error.message}")
        return GradeResult(1.0, passed=True)

    def check_items(self, items: list[dict[str, Any]]) -> None:
        check_fields(self.name, [self.spec.input], items)
