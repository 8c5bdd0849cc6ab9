"""What a chat training message may carry besides its role and content, shared by the registry
(which checks every line on upload) and the trainer (which masks the loss), so that a dataset
the registry takes is one the trainer trains as written.

- ``weight`` (OpenAI fine-tuning's): on assistant messages only, 0 or 1. 0: the turn stays in
  the context but is not trained on (its tokens get label -100); 1, the default: trained on.
- ``tool_calls`` / ``tool_call_id`` are refused: the trainer renders messages through the base
  model's chat template as role and content only (SmolLM2's template has no tool syntax), so a
  tool call would silently become an empty or missing turn.
- ``name`` is accepted and not rendered, as OpenAI's chat format allows it.
"""

from __future__ import annotations

from typing import Any

from services.common.errors import shown

MESSAGE_WEIGHTS = (0, 1)
TOOL_CALL_KEYS = ("tool_calls", "tool_call_id")


def check_message_extras(message: dict[str, Any], i: int) -> tuple[str, str] | None:
    """The first rule message ``i`` (1-based) breaks with its extra keys, as ``(rule, why)``,
    or None."""
    for key in TOOL_CALL_KEYS:
        if key in message:
            return (
                "tool_calls_unsupported",
                f"message {i} has {key}: tool calls cannot be trained (messages are rendered "
                "as role and content only); write the call as the assistant's content",
            )
    if "weight" not in message:
        return None
    role, weight = message.get("role"), message["weight"]
    if role != "assistant":
        return (
            "weight_not_on_assistant",
            f"message {i} ({shown(role, 40)}) has a weight; only assistant messages carry one",
        )
    if type(weight) is not int or weight not in MESSAGE_WEIGHTS:
        return (
            "invalid_weight",
            f"message {i} has weight {shown(weight, 40)}; a weight is 0 (not trained on) or 1 "
            "(trained on)",
        )
    return None


def is_trained(message: dict[str, Any]) -> bool:
    """An assistant turn whose tokens are learned from (of a message that passed the check)."""
    return message.get("role") == "assistant" and message.get("weight", 1) == 1
