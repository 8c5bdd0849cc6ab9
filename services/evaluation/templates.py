"""Grader templates: ``{{item.<field>}}`` (a reference field of the eval item, ``a.b`` for a
nested one) and ``{{sample.output_text}}`` (the model's answer).

A template is checked when the grader spec is validated (an unknown namespace is the user's
typo, refused before anything runs); a field an item lacks is found by the pre-flight or, at run
time, is that item's error ``template_field_missing``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import AfterValidator

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text",)
FORMS = "{{item.<field>}} or {{sample.output_text}}"


class MissingField(LookupError):
    """An item lacks a field a template reads; ``path`` is it as written (``item.sql``)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def _parse(inner: str) -> tuple[str, ...]:
    path = inner.strip()
    parts = tuple(path.split("."))
    if not path or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise ValueError(f"{{{{{inner}}}}} is not a placeholder; write {FORMS}")
    if parts[0] not in NAMESPACES:
        raise ValueError(
            f"unknown namespace {parts[0]!r} in {{{{{inner}}}}}; templates read {FORMS}"
        )
    if parts[0] == "item" and len(parts) < 2:
        raise ValueError("{{item}} needs a field: write {{item.<field>}}")
    if parts[0] == "sample" and parts[1:] not in [(f,) for f in SAMPLE_FIELDS]:
        raise ValueError(f"{{{{{inner}}}}}: a sample has only {{{{sample.output_text}}}}")
    return parts


def placeholders(template: str) -> list[tuple[str, ...]]:
    """The paths a template reads, in order; raises ValueError for a malformed one."""
    paths = [_parse(m.group(1)) for m in _PLACEHOLDER.finditer(template)]
    rest = _PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise ValueError("unbalanced '{{' or '}}' in a template; placeholders are {{item.x}}")
    return paths


def check_template(template: str) -> str:
    """Pydantic validator: the template unchanged, or ValueError saying what to fix."""
    placeholders(template)
    return template


# A grader spec field that holds a template (checked when the spec is validated).
Template = Annotated[str, AfterValidator(check_template)]


def _lookup(parts: tuple[str, ...], item: dict[str, Any], output_text: str) -> Any:
    if parts[0] == "sample":
        return output_text
    value: Any = item
    for part in parts[1:]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise MissingField(".".join(parts))
    return value


def _text(value: Any) -> str:
    # Numbers, booleans and objects appear as their JSON ("true", "3", {"a": 1}), never as
    # Python's repr ("True").
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, item: dict[str, Any], output_text: str) -> str:
    """The template with every placeholder replaced; raises MissingField."""
    return _PLACEHOLDER.sub(
        lambda m: _text(_lookup(_parse(m.group(1)), item, output_text)), template
    )


def resolve(template: str, item: dict[str, Any], output_text: str) -> Any:
    """Like ``render``, but a template that is exactly one placeholder gives the field's own
    value (``"{{item.ordered}}"`` -> ``True``), not its text."""
    whole = _PLACEHOLDER.fullmatch(template.strip())
    if whole:
        return _lookup(_parse(whole.group(1)), item, output_text)
    return render(template, item, output_text)


def missing_field(templates: list[str], item: dict[str, Any]) -> str | None:
    """The first ``item.<field>`` the templates read that ``item`` lacks, or None."""
    for template in templates:
        for parts in placeholders(template):
            try:
                _lookup(parts, item, "")
            except MissingField as exc:
                return exc.path
    return None
