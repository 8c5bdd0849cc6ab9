"""An eval's `testing_criteria` (OpenAI's grader objects) as the evaluation room's grader specs.

What changes on the way, and why:
- Names: OpenAI's are free text ("Exact match"); criterion `i` grades as `criterion-<i>` and the
  eval keeps the names it was given (names.criterion_name).
- Templates: a run's eval set line is `{"input": <rendered messages>, "item": <the row's item>}`
  (an item may well have a field called `input`), so `{{item.x}}` reads `{{item.item.x}}` there.
- OpenAI's message shapes: content objects (`{"type": "input_text", "text": ...}`) become
  their text, `type: "message"` is dropped, and a score_model's `max_completions_tokens` is
  the evaluation room's `max_tokens`.
Grader types OpenAI has and tuneplex does not run (`label_model`, `python`) are refused with
the reason; tuneplex's own (`regex`, `json`, `sql_execution`, `multi`) are taken as well.
"""

from __future__ import annotations

import re
from typing import Any

from services.common.errors import InvalidArgument
from services.evaluation.graders import validate_graders
from services.evaluation.templates import placeholders
from services.gateway.evals.names import criterion_name

PARAM = "testing_criteria"
_ITEM_PLACEHOLDER = re.compile(r"\{\{\s*item\.")
NOT_RUN = {
    "label_model": "label_model graders are not run here; use score_model (a judge's number "
    "in a range with a pass_threshold) or string_check",
    "python": "python graders are not run here (tuneplex runs no user code); use string_check, "
    "text_similarity, regex, json or score_model",
}
TEXT_PARTS = ("input_text", "output_text", "text")


def content_text(content: Any, param: str) -> str:
    """A message's content as text: a string, a text part, or a list of text parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    texts = []
    for part in parts:
        if not (isinstance(part, dict) and part.get("type") in TEXT_PARTS):
            raise InvalidArgument(
                f"{param}: only text content is served here (a string or input_text parts)",
                param=param,
                code="unsupported_content",
            )
        if not isinstance(part.get("text"), str):
            raise InvalidArgument(f"{param}: a text part needs its text", param=param)
        texts.append(part["text"])
    return "".join(texts)


def _messages(messages: Any, param: str) -> Any:
    if not isinstance(messages, list):
        return messages  # the grader's own validation says what it must be
    out = []
    for i, message in enumerate(messages):
        if isinstance(message, dict) and "content" in message:
            message = {k: v for k, v in message.items() if k != "type"}
            message["content"] = content_text(message["content"], f"{param}[{i}].content")
        out.append(message)
    return out


def _openai_fields(spec: dict[str, Any], param: str) -> dict[str, Any]:
    spec = dict(spec)
    if spec.get("type") == "score_model":
        spec["input"] = _messages(spec.get("input"), f"{param}.input")
        sampling = spec.get("sampling_params")
        if isinstance(sampling, dict):
            sampling = {k: v for k, v in sampling.items() if v is not None}
            for theirs in ("max_completions_tokens", "max_completion_tokens"):
                if theirs in sampling:
                    sampling["max_tokens"] = sampling.pop(theirs)
            if sampling.pop("reasoning_effort", None) is not None:
                raise InvalidArgument(
                    f"{param}.sampling_params.reasoning_effort: no judge here reasons",
                    param=f"{param}.sampling_params.reasoning_effort",
                )
            spec["sampling_params"] = sampling
    if spec.get("type") == "multi" and isinstance(spec.get("graders"), dict):
        spec["graders"] = {
            k: _openai_fields(v, f"{param}.graders.{k}") if isinstance(v, dict) else v
            for k, v in spec["graders"].items()
        }
    return spec


def _rewrite(value: Any) -> Any:
    """Every template's `{{item.x}}` as `{{item.item.x}}` (see the module's docstring)."""
    if isinstance(value, str):
        return _ITEM_PLACEHOLDER.sub("{{item.item.", value)
    if isinstance(value, list):
        return [_rewrite(v) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v) for k, v in value.items()}
    return value


def grader_specs(criteria: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The normalised grader specs of `criteria`, or a 400 naming `testing_criteria[i]...`."""
    if not isinstance(criteria, list) or not criteria:
        raise InvalidArgument(f"{PARAM}: give at least one testing criterion", param=PARAM)
    specs = []
    for i, criterion in enumerate(criteria):
        param = f"{PARAM}[{i}]"
        if not isinstance(criterion, dict):
            raise InvalidArgument(f"{param}: a testing criterion is a grader object", param=param)
        kind = criterion.get("type")
        if not isinstance(kind, str):
            raise InvalidArgument(
                f"{param}.type: a testing criterion needs a type (a string)",
                param=f"{param}.type",
                code="invalid_grader",
            )
        name = criterion.get("name")
        if name is not None and not (isinstance(name, str) and len(name) <= 256):
            raise InvalidArgument(
                f"{param}.name must be a string of at most 256 characters",
                param=f"{param}.name",
                code="invalid_grader",
            )
        if kind in NOT_RUN:
            raise InvalidArgument(
                f"{param}.type: {NOT_RUN[kind]}", param=f"{param}.type", code="grader_not_supported"
            )
        spec = _openai_fields(criterion, param)
        spec["name"] = criterion_name(i)
        specs.append(_rewrite(spec))
    return validate_graders(specs, param=PARAM)


def templates_of(specs: list[dict[str, Any]]) -> list[str]:
    """Every string of the specs that reads a placeholder (the run's pre-flight checks each
    line has the fields they read)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if "{{" in value:
                try:
                    placeholders(value)
                except ValueError:
                    return  # not a template (e.g. a regex); the grader validated its own
                found.append(value)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    walk(specs)
    return found
