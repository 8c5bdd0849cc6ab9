"""``multi``: several sub-graders (any type but multi) combined by a formula over their names,
``"0.7 * sql + 0.3 * fmt"``, evaluated by ``simpleeval`` (no Python ``eval``: the formula is
user text). The result is clipped to [0, 1]. The operators and functions are OpenAI's: + - * /
^ (power), min, max, abs, floor, ceil, exp, sqrt, log.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from simpleeval import InvalidExpression, SimpleEval

from services.evaluation.graders.base import Grader, GradeResult, GraderSpec, Sample

FORMULA_FAILED = "formula_failed"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}


def evaluate(formula: str, scores: Mapping[str, float]) -> float:
    """The formula's value for these sub-grader scores; raises for an invalid formula."""
    # OpenAI's formulas write a power as "^"; as Python's XOR it would also bind looser than
    # "+". As "**" it gets Python's precedence and simpleeval's guarded power ("9^9^9" is
    # refused, not computed for hours).
    python = formula.replace("^", "**")
    value = SimpleEval(functions=FUNCTIONS, names=dict(scores)).eval(python)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"the formula gives {type(value).__name__}, not a number")
    return float(value)


def check_formula(formula: str, names: list[str]) -> None:
    """ValueError unless ``formula`` is a valid formula over exactly these names."""
    try:
        evaluate(formula, {name: 1.0 for name in names})
    except (ArithmeticError, ValueError):
        pass  # a math domain error at 1.0 says nothing about the formula being well formed
    except (InvalidExpression, SyntaxError, TypeError, KeyError) as exc:
        known = ", ".join(names)
        raise ValueError(
            f"invalid formula {formula!r} ({type(exc).__name__}: {exc}); it may use the "
            f"sub-grader names ({known}), numbers, + - * / ^ and {', '.join(FUNCTIONS)}"
        ) from None


class MultiSpec(GraderSpec):
    type: Literal["multi"]
    # The sub-grader specs are validated (and normalised) by the package, which knows all types.
    graders: dict[str, dict[str, Any]] = Field(min_length=1)
    calculate_output: str = Field(min_length=1, max_length=2000)

    @field_validator("graders")
    @classmethod
    def _names_are_identifiers(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key in value:
            if not _KEY.fullmatch(key) or key in FUNCTIONS:
                raise ValueError(
                    f"sub-grader name {key!r} must be a formula name: a letter or '_' then "
                    "letters, digits, '_' (and not a function name)"
                )
        return value

    @field_validator("calculate_output")
    @classmethod
    def _valid_formula(cls, value: str, info: ValidationInfo) -> str:
        check_formula(value, list(info.data.get("graders", {})))
        return value


class MultiGrader:
    spec_model = MultiSpec

    def __init__(self, spec: MultiSpec, graders: Mapping[str, Grader]) -> None:
        self.spec = spec
        self.name = spec.name
        self.graders = dict(graders)

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult:
        keys = list(self.graders)
        results = await asyncio.gather(*(self.graders[k].grade(item, sample) for k in keys))
        scores = {k: r.score for k, r in zip(keys, results, strict=True)}
        failed = next(((k, r) for k, r in zip(keys, results, strict=True) if r.error), None)
        try:
            score = min(1.0, max(0.0, evaluate(self.spec.calculate_output, scores)))
        except (ArithmeticError, ValueError, TypeError, InvalidExpression) as exc:
            return GradeResult(0.0, error=FORMULA_FAILED, detail=f"{type(exc).__name__}: {exc}")
        if failed is not None:  # the formula ran with that sub-grader's 0; the item says why
            key, result = failed
            return GradeResult(score, error=result.error, detail=f"{key}: {result.detail or ''}")
        return GradeResult(score)

    def check_items(self, items: list[dict[str, Any]]) -> None:
        for grader in self.graders.values():
            grader.check_items(items)
