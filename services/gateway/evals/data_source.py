"""A run's `data_source` (OpenAI's `completions` type): which model answers, which rows, how
each row becomes the messages the model answers, and with which sampling settings.

Everything a row could get wrong is found here, before anything is pushed or queued: the row
breaks the eval's `item_schema`, a template reads a field the row lacks, a rendered
conversation does not end with the user's turn. The error names the row as the user knows it
(`questions.jsonl line 3`, `data_source.source.content[2]`) and the rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema

from services.common.errors import InvalidArgument
from services.common.eval_items import EVAL_ROLES, check_eval_item
from services.evaluation.sampling import MAX_SEED, MAX_TEMPERATURE, MAX_TOKENS
from services.evaluation.templates import MissingField, missing_field, placeholders, render
from services.gateway.evals.criteria import content_text

P = "data_source"
MAX_ROWS = 10_000
# OpenAI's sampling fields this gateway cannot honour: refused rather than silently ignored.
UNSUPPORTED_SAMPLING = ("response_format", "tools", "reasoning_effort", "text")
SAMPLING_FIELDS = ("temperature", "max_completion_tokens", "top_p", "seed")
# (low, high, integral) of each: the eval job's bounds (evaluation/sampling.py).
SAMPLING_RANGES = {
    "temperature": (0.0, MAX_TEMPERATURE, False),
    "max_completion_tokens": (1, MAX_TOKENS, True),
    "top_p": (0.0, 1.0, False),
    "seed": (0, MAX_SEED - 1, True),
}


def refuse(message: str, param: str, code: str = "invalid_data_source") -> InvalidArgument:
    return InvalidArgument(message, param=param, code=code)


@dataclass(frozen=True)
class Completions:
    """A parsed `completions` data source (the rows are read by the caller: a file or inline)."""

    model: str
    source: dict[str, Any]
    input_messages: dict[str, Any]
    sampling: dict[str, Any]  # the EvalSpec's sampling settings (temperature, max_tokens, ...)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise refuse(f"{param} must be an object", param)
    return value


def parse(data_source: Any) -> Completions:
    source = _object(data_source, P)
    kind = source.get("type")
    if kind in ("jsonl", "responses"):
        raise refuse(
            f"data source type {kind} is not run here: a run samples a model served by this "
            "gateway; use type completions (with model, source and input_messages)",
            f"{P}.type",
            "unsupported_data_source",
        )
    if kind != "completions":
        raise refuse(f"{P}.type must be completions", f"{P}.type")
    unknown = sorted(set(source) - {"type", "model", "source", "input_messages", "sampling_params"})
    if unknown:
        raise refuse(f"unknown field {P}.{unknown[0]}", f"{P}.{unknown[0]}"[:100])
    model = source.get("model")
    if not isinstance(model, str) or not model:
        raise refuse(f"{P}.model is required: the model that answers", f"{P}.model")
    rows = _object(source.get("source"), f"{P}.source")
    if rows.get("type") not in ("file_id", "file_content"):
        raise refuse(f"{P}.source.type must be file_id or file_content", f"{P}.source.type")
    if rows["type"] == "file_id" and not isinstance(rows.get("id"), str):
        raise refuse(f"{P}.source.id is required for a file_id source", f"{P}.source.id")
    if rows["type"] == "file_content" and not isinstance(rows.get("content"), list):
        raise refuse(f"{P}.source.content must be a list of rows", f"{P}.source.content")
    messages = source.get("input_messages")
    if messages is None:
        raise refuse(
            f"{P}.input_messages is required: a template of messages, or an item_reference",
            f"{P}.input_messages",
        )
    _check_input_messages(_object(messages, f"{P}.input_messages"))
    return Completions(model, rows, messages, _sampling(source.get("sampling_params")))


def _check_input_messages(messages: dict[str, Any]) -> None:
    param = f"{P}.input_messages"
    if messages.get("type") == "item_reference":
        reference = messages.get("item_reference")
        if not isinstance(reference, str) or not reference.startswith("item."):
            raise refuse(
                f"{param}.item_reference must name an item field, e.g. item.messages",
                f"{param}.item_reference",
            )
        return
    if messages.get("type") != "template":
        raise refuse(f"{param}.type must be template or item_reference", f"{param}.type")
    template = messages.get("template")
    if not isinstance(template, list) or not template:
        raise refuse(f"{param}.template must be a non-empty list of messages", f"{param}.template")
    for i, message in enumerate(template):
        where = f"{param}.template[{i}]"
        if not isinstance(message, dict) or message.get("role") not in EVAL_ROLES:
            raise refuse(f"{where} needs a role: one of {', '.join(EVAL_ROLES)}", f"{where}.role")
        text = content_text(message.get("content"), f"{where}.content")
        try:
            paths = placeholders(text)
        except ValueError as exc:
            raise refuse(f"{where}.content: {exc}", f"{where}.content") from None
        if any(p[0] == "sample" for p in paths):
            raise refuse(
                f"{where}.content reads the sample; input messages are what produces it",
                f"{where}.content",
            )


def _sampling(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    params = _object(params, f"{P}.sampling_params")
    for name in UNSUPPORTED_SAMPLING:
        if params.get(name) is not None:
            raise refuse(
                f"{P}.sampling_params.{name} is not supported here",
                f"{P}.sampling_params.{name}",
                "unsupported_sampling",
            )
    unknown = sorted(set(params) - {*SAMPLING_FIELDS, *UNSUPPORTED_SAMPLING})
    if unknown:
        raise refuse(
            f"unknown field {P}.sampling_params.{unknown[0]}",
            f"{P}.sampling_params.{unknown[0]}"[:100],
        )
    out = {k: params[k] for k in SAMPLING_FIELDS if params.get(k) is not None}
    for name, value in out.items():
        low, high, integral = SAMPLING_RANGES[name]
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (integral and not isinstance(value, int)) or not low <= value <= high:
            kind = "an integer" if integral else "a number"
            raise refuse(
                f"{P}.sampling_params.{name} must be {kind} from {low:g} to {high:g}",
                f"{P}.sampling_params.{name}",
            )
    if out.get("top_p") == 0:
        raise refuse(f"{P}.sampling_params.top_p must be above 0", f"{P}.sampling_params.top_p")
    if "max_completion_tokens" in out:
        out["max_tokens"] = out.pop("max_completion_tokens")
    return out


def check_item_schema(schema: Any, param: str) -> None:
    """A `custom` data source's `item_schema` must be a JSON schema (draft 2020-12)."""
    if not isinstance(schema, dict):
        raise refuse(f"{param} must be a JSON schema object", param, "invalid_item_schema")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise refuse(
            f"{param} is not a valid JSON schema: {exc.message[:300]}", param, "invalid_item_schema"
        ) from None


def rows_from_jsonl(data: bytes, filename: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of an `evals` file (already checked by the registry)."""
    rows = []
    for n, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            rows.append((f"{filename} line {n}", json.loads(line)))
    return rows


def rows_inline(content: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for i, row in enumerate(content):
        where = f"{P}.source.content[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
            raise refuse(f"{where} must be an object with an item object", where)
        extra = sorted(set(row) - {"item", "sample"})
        if extra:
            raise refuse(f"{where}: a row holds only item and sample, not {extra[0]}", where)
        rows.append((where, row))
    return rows


def render_rows(
    rows: list[tuple[str, dict[str, Any]]],
    source: Completions,
    item_schema: dict[str, Any],
    grader_templates: list[str],
) -> list[dict[str, Any]]:
    """The eval set lines (`{"input": messages, "item": item}`) of the rows, or a 400 naming the
    first row at fault and the rule."""
    if not rows:
        raise refuse(f"{P}.source has no rows", f"{P}.source")
    if len(rows) > MAX_ROWS:
        raise refuse(f"{P}.source has {len(rows)} rows; at most {MAX_ROWS}", f"{P}.source")
    validator = jsonschema.Draft202012Validator(item_schema)
    lines = []
    for where, row in rows:
        item = row["item"]
        try:
            broken = jsonschema.exceptions.best_match(validator.iter_errors(item))
        except Exception as exc:  # noqa: BLE001 - e.g. a `$ref` no document here resolves
            raise refuse(
                f"the eval's item_schema cannot be applied to {where}: {str(exc)[:200]}",
                f"{P}.source",
                "invalid_item_schema",
            ) from None
        if broken is not None:
            at = "/".join(str(p) for p in broken.absolute_path)
            raise refuse(
                f"{where}: the item does not match the eval's item_schema"
                f"{f' at {at}' if at else ''}: {broken.message[:300]} (rule: item_schema)",
                f"{P}.source",
            )
        line = {"input": _render_messages(item, source.input_messages, where), "item": item}
        broken_item = check_eval_item(line)
        if broken_item is not None:
            rule, why = broken_item
            raise refuse(f"{where}: {why} (rule: {rule})", f"{P}.input_messages")
        missing = missing_field(grader_templates, line)
        if missing is not None:
            field = missing.removeprefix("item.item.")
            raise refuse(
                f"{where}: a testing criterion reads {{{{item.{field}}}}} but the item has no "
                "such field (rule: template_field_missing)",
                f"{P}.source",
            )
        lines.append(line)
    return lines


def _render_messages(item: dict[str, Any], spec: dict[str, Any], where: str) -> Any:
    if spec["type"] == "item_reference":
        value: Any = item
        for part in spec["item_reference"].split(".")[1:]:
            if not isinstance(value, dict) or part not in value:
                raise refuse(
                    f"{where}: the item has no {spec['item_reference']} "
                    "(input_messages.item_reference) (rule: template_field_missing)",
                    f"{P}.input_messages",
                )
            value = value[part]
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if not isinstance(value, list):
            raise refuse(
                f"{where}: {spec['item_reference']} must be a string or a list of messages",
                f"{P}.input_messages",
            )
        return [
            {"role": m.get("role"), "content": content_text(m.get("content"), where)}
            if isinstance(m, dict)
            else m
            for m in value
        ]
    out = []
    for i, message in enumerate(spec["template"]):
        text = content_text(message["content"], f"{P}.input_messages.template[{i}].content")
        try:
            out.append({"role": message["role"], "content": render(text, item, "")})
        except MissingField as exc:
            raise refuse(
                f"{where}: input_messages.template[{i}] reads {{{{{exc.path}}}}} but the item "
                "has no such field (rule: template_field_missing)",
                f"{P}.source",
            ) from None
    return out
