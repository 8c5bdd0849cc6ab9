"""What every grader shares: the sample it scores, the result it gives, the resources it may use
(the one database or judge its spec names, passed in), and the spec model base with the mapping
of pydantic's complaints to ``InvalidArgument`` naming the field at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import ErrorDetails

from services.common.errors import InvalidArgument
from services.evaluation.sampling import SamplingConfig
from services.evaluation.templates import MissingField, missing_field

INVALID_GRADER = "invalid_grader"
TEMPLATE_FIELD_MISSING = "template_field_missing"
PREFLIGHT_PARAM = "evaluation.eval_set"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Sample:
    output_text: str


@dataclass
class GradeResult:
    score: float  # in [0, 1]
    passed: bool | None = None
    error: str | None = None  # a rule code: the item could not be graded (score 0)
    detail: str | None = None  # why, for a person reading the item's result


class Grader(Protocol):
    name: str

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult: ...

    def check_items(self, items: list[dict[str, Any]]) -> None: ...


class Judge(Protocol):
    async def complete(
        self, model: str, messages: list[dict[str, str]], sampling: SamplingConfig
    ) -> str: ...


@dataclass
class GraderResources:
    databases: Mapping[str, Path] = field(default_factory=dict)  # spec's ref -> local .db
    judge: Judge | None = None  # for score_model


class GraderSpec(BaseModel):
    """Keys common to every grader type; a subclass per type adds its own. Unknown keys are
    refused (a misspelt ``refrence`` must not silently grade against nothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("use 1-64 letters, digits, '_', '.' or '-'")
        return value


S = TypeVar("S", bound=GraderSpec)


def _loc(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _describe(err: ErrorDetails, model: type[GraderSpec], kind: str) -> str:
    field_name = str(err["loc"][-1]) if err["loc"] else ""
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
        keys = ", ".join(f.alias or n for n, f in model.model_fields.items())
        return f"unknown key {field_name!r} for a {kind} grader; its keys are {keys}"
    if err["type"] == "missing":
        return f"a {kind} grader needs {field_name!r}"
    message = err["msg"]
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def parse_spec(model: type[S], spec: dict[str, Any], param: str) -> S:
    """``spec`` as ``model``, or InvalidArgument(param="<param>.<field>") saying what to change."""
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = f"{param}{_loc(err['loc'])}"
        text = _describe(err, model, str(spec.get("type")))
        raise InvalidArgument(f"{where}: {text}", param=where, code=INVALID_GRADER) from None


def missing_result(exc: MissingField) -> GradeResult:
    return GradeResult(
        0.0, passed=False, error=TEMPLATE_FIELD_MISSING, detail=f"the item has no {exc.path}"
    )


def preflight_error(n: int, why: str, rule: str) -> InvalidArgument:
    """The pre-flight's refusal of item ``n`` (1-based) of the eval set."""
    return InvalidArgument(f"item {n}: {why} (rule: {rule})", param=PREFLIGHT_PARAM, code=rule)


def check_fields(grader: str, templates: list[str], items: list[dict[str, Any]]) -> None:
    """Pre-flight shared by all graders: every item has the fields the templates read."""
    for n, item in enumerate(items, start=1):
        path = missing_field(templates, item)
        if path is not None:
            why = f"grader {grader!r} reads {{{{{path}}}}} but the item has no such field"
            raise preflight_error(n, why, TEMPLATE_FIELD_MISSING)
