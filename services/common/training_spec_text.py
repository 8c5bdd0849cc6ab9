"""How the training spec's declaration reads to people: the allowed range of a setting, its
default, and the message that refuses a value, derived from the field's bounds and help (so
the CLI's help, docs/training-spec.md and the trainer's errors say the same thing)."""

from __future__ import annotations

from typing import get_args

import annotated_types
from pydantic_core import ErrorDetails

from services.common.errors import InvalidArgument
from services.common.training_spec import (
    ENUMS,
    NESTED,
    SETTINGS,
    extra_of,
    field_of,
    param_of,
    proto_name,
    section_of,
)


def label_of(name: str) -> str:
    """How messages name a setting: its proto field, with its message in front for the
    settings of a sub-message other than hyperparameters (``lora.r``,
    ``evaluation.sampling.max_tokens``)."""
    section = section_of(name)
    if section in ("", "hyperparameters"):
        return name
    return f"{section}.{proto_name(name)}"


def bounds_of(name: str) -> dict[str, float]:
    """``{"ge": 1, "le": 1024}`` and the like, as declared."""
    found: dict[str, float] = {}
    for item in field_of(name).metadata:
        for key in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, key.capitalize())):
                found[key] = getattr(item, key)
    return found


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def range_text(name: str) -> str:
    """The allowed values: ``1..1024`` for integers, ``(0, 1]`` for reals; "" if unbounded."""
    b = bounds_of(name)
    if not b:
        return ""
    if field_of(name).annotation is int:
        low = b["ge"] if "ge" in b else b["gt"] + 1
        high = b["le"] if "le" in b else b["lt"] - 1
        return f"{low}..{high}"
    opening = f"[{_number(b['ge'])}" if "ge" in b else f"({_number(b['gt'])}"
    closing = f"{_number(b['le'])}]" if "le" in b else f"{_number(b['lt'])})"
    return f"{opening}, {closing}"


def default_text(name: str) -> str:
    field = field_of(name)
    if text := extra_of(name).get("default_text"):
        return text
    if field.is_required():
        return "(required)"
    value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "(none)"
    if value == ():
        return "(none)"
    if isinstance(value, tuple):
        return ", ".join(value)
    return _number(value) if isinstance(value, float) else str(value)


def allowed_text(name: str) -> str:
    """What a setting accepts, for people: its choices, its declared rule or its range."""
    if choices := choices_of(name):
        return ", ".join(f"`{c}`" for c in choices)
    if allowed := extra_of(name).get("allowed"):
        return allowed
    return range_text(name) or "true, false"


def choices_of(name: str) -> tuple[str, ...]:
    """The values of an enum setting (``method``, ...), else ()."""
    return get_args(field_of(name).annotation) if name in ENUMS else ()


OPERATORS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def setting_at(loc: tuple[int | str, ...]) -> str:
    """The setting a pydantic error location points into (``("evaluation", "graders", 0)`` ->
    ``evaluation.graders``), "" for none; a nested config's own rules point at its field."""
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[0] in NESTED and f"{parts[0]}.{parts[1]}" in SETTINGS:
        return f"{parts[0]}.{parts[1]}"
    if parts and (parts[0] in SETTINGS or parts[0] in NESTED):
        return parts[0]
    return ""


def refusal(error: ErrorDetails) -> InvalidArgument:
    """One pydantic error as the message a user reads: the value, the rule, the fix."""
    name = setting_at(error["loc"])
    if not name:
        return InvalidArgument(error["msg"], param="training", code="invalid_spec")
    label, kind, value = label_of(name), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        message = f"{label} is required"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    elif kind in (
        "finite_number",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
    ):
        shown = _number(value) if isinstance(value, int | float) else repr(value)
        broken = next((f"{OPERATORS[k]} {_number(ctx[k])}" for k in OPERATORS if k in ctx), "")
        why = f"must be {broken}" if broken else "is not a finite number"
        default = default_text(name)
        message = f"{label}={shown} {why}; use a value in {range_text(name)} (default {default})"
    elif kind == "literal_error":
        message = f"{label}={value!r} is unknown; use one of {', '.join(choices_of(name))}"
    else:
        message = f"{label}: {error['msg']}"
    return InvalidArgument(message, param=param_of(name), code="invalid_spec")
