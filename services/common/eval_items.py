"""What one line of an eval set is, shared by the registry (which checks every line on upload)
and the eval worker (which turns items into chat requests).

A line is a JSON object with ``input`` — the chat messages the model answers, or a plain string
for one user turn — and any other fields, which are the references graders read as
``{{item.<field>}}``. The input must end with a user turn: the model's answer is what is graded.
"""

from __future__ import annotations

from typing import Any

INPUT_KEY = "input"
EVAL_ROLES = ("system", "developer", "user", "assistant")


def check_eval_item(obj: object) -> tuple[str, str] | None:
    """The first rule ``obj`` breaks, as ``(rule, why)``, or None when it is a valid item."""
    if not isinstance(obj, dict):
        return "not_an_object", "an eval item is a JSON object"
    if INPUT_KEY not in obj:
        return "missing_input", 'an eval item needs "input": the chat messages the model answers'
    value = obj[INPUT_KEY]
    if isinstance(value, str):
        return None if value.strip() else ("empty_input", '"input" is empty')
    if not isinstance(value, list):
        return "input_type", '"input" must be a list of messages or a string'
    if not value:
        return "empty_input", '"input" has no messages'
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            return "message_type", f"message {i} of input is not an object"
        role = message.get("role")
        if role not in EVAL_ROLES:
            return "bad_role", f"message {i} has role {role!r}; use one of {', '.join(EVAL_ROLES)}"
        if not isinstance(message.get("content"), str):
            return "content_type", f"message {i} needs a string content"
    if value[-1]["role"] != "user":
        return "last_not_user", "the last input message must be the user's (its answer is graded)"
    return None


def item_messages(obj: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages of a valid item (a string input is one user message)."""
    value = obj[INPUT_KEY]
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]
