"""Grader specs (OpenAI-shaped JSON objects) -> validated, normalised specs -> graders.

``validate_graders`` is what admission calls: every mistake is an ``InvalidArgument`` whose
``param`` names the field (``graders[1].pattern``) and whose message says what to change. The
normalised specs (defaults filled) are what an evaluation records and digests, so two runs
compare only when they graded alike.
"""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidArgument
from services.evaluation.graders.base import (
    INVALID_GRADER,
    Grader,
    GradeResult,
    GraderResources,
    GraderSpec,
    Judge,
    Sample,
    parse_spec,
)
from services.evaluation.graders.json_check import JsonGrader
from services.evaluation.graders.multi import MultiGrader, MultiSpec
from services.evaluation.graders.regex import RegexGrader
from services.evaluation.graders.score_model import ScoreModelGrader
from services.evaluation.graders.sql_execution import SqlExecutionGrader
from services.evaluation.graders.string_check import StringCheckGrader
from services.evaluation.graders.text_similarity import TextSimilarityGrader

__all__ = [
    "GRADER_TYPES",
    "GradeResult",
    "Grader",
    "GraderResources",
    "Judge",
    "Sample",
    "build_graders",
    "judge_models",
    "referenced_databases",
    "validate_graders",
]

GRADER_TYPES: dict[str, type[Any]] = {
    "string_check": StringCheckGrader,
    "text_similarity": TextSimilarityGrader,
    "regex": RegexGrader,
    "json": JsonGrader,
    "sql_execution": SqlExecutionGrader,
    "score_model": ScoreModelGrader,
    "multi": MultiGrader,
}
MAX_GRADERS = 32


def _refuse(param: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{param}: {message}", param=param, code=INVALID_GRADER)


def _spec_model(spec: object, param: str, nested: bool) -> type[GraderSpec]:
    if not isinstance(spec, dict):
        raise _refuse(param, "a grader is a JSON object with a type and a name")
    allowed = [t for t in GRADER_TYPES if not (nested and t == "multi")]
    kind = spec.get("type")
    if kind is None:
        raise _refuse(f"{param}.type", f"a grader needs a type: one of {', '.join(allowed)}")
    if nested and kind == "multi":
        raise _refuse(f"{param}.type", "a multi grader cannot contain another multi grader")
    if not isinstance(kind, str) or kind not in GRADER_TYPES:
        raise _refuse(
            f"{param}.type", f"unknown grader type {kind!r}; use one of {', '.join(allowed)}"
        )
    model: type[GraderSpec] = GRADER_TYPES[kind].spec_model
    return model


def _normalise(spec: object, param: str, nested: bool = False) -> dict[str, Any]:
    model = parse_spec(_spec_model(spec, param, nested), spec, param)  # type: ignore[arg-type]
    out = model.model_dump(mode="json", by_alias=True)
    if isinstance(model, MultiSpec):
        out["graders"] = {
            key: _normalise(
                {"name": key, **sub} if isinstance(sub, dict) else sub,
                f"{param}.graders.{key}",
                nested=True,
            )
            for key, sub in model.graders.items()
        }
    return out


def validate_graders(specs: list[dict[str, Any]], param: str = "graders") -> list[dict[str, Any]]:
    """The normalised specs (defaults filled), or InvalidArgument naming the field at fault."""
    if not isinstance(specs, list) or not specs:
        raise _refuse(param, "give at least one grader")
    if len(specs) > MAX_GRADERS:
        raise _refuse(param, f"{len(specs)} graders; at most {MAX_GRADERS}")
    normalised: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        out = _normalise(spec, f"{param}[{i}]")
        name = out["name"]
        if name in seen:
            raise _refuse(
                f"{param}[{i}].name",
                f"name {name!r} is already used by {param}[{seen[name]}]; "
                "names are unique within an eval",
            )
        seen[name] = i
        normalised.append(out)
    return normalised


def _walk(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat: list[dict[str, Any]] = []
    for spec in specs:
        flat.append(spec)
        if spec.get("type") == "multi" and isinstance(spec.get("graders"), dict):
            flat.extend(_walk(list(spec["graders"].values())))
    return flat


def referenced_databases(specs: list[dict[str, Any]]) -> list[str]:
    """The database refs ``sql_execution`` graders name (inside multi too), first use first."""
    refs = [s["database"] for s in _walk(specs) if s.get("type") == "sql_execution"]
    return list(dict.fromkeys(r for r in refs if isinstance(r, str)))


def judge_models(specs: list[dict[str, Any]]) -> list[str]:
    """The models ``score_model`` graders ask (inside multi too), first use first."""
    models = [s["model"] for s in _walk(specs) if s.get("type") == "score_model"]
    return list(dict.fromkeys(m for m in models if isinstance(m, str)))


def _build(spec: dict[str, Any], resources: GraderResources) -> Grader:
    cls = GRADER_TYPES[spec["type"]]
    model = cls.spec_model.model_validate(spec)
    if isinstance(model, MultiSpec):
        subs = {key: _build(sub, resources) for key, sub in model.graders.items()}
        return MultiGrader(model, subs)
    grader: Grader = cls(model, resources)
    return grader


def build_graders(specs: list[dict[str, Any]], resources: GraderResources) -> list[Grader]:
    """Graders for these specs (validated first); a database or judge the specs need and
    ``resources`` lack is FailedPrecondition."""
    return [_build(spec, resources) for spec in validate_graders(specs)]
