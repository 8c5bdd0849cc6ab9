"""What an engine's refusal of a request means for the user, in our words.

vLLM's 400s are the user's to fix (context too long, a bad sampling parameter) and keep their
meaning, but not vLLM's dress: its request validation arrives as a dump of pydantic error dicts
with `param: body.seed`, a tokenizer's own exception text arrives as is, and every message
names the adapter by the internal id the engine knows it by. Those become one sentence naming
the field the user sent, under the name the user sent. Its 5xx mean the engine is sick: the
user is told to retry, the details go to the log.
"""

from __future__ import annotations

import ast
import json
import logging
import re

from services.common.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TuneplexError,
    Unavailable,
)

log = logging.getLogger(__name__)

_VALIDATION_DUMP = re.compile(r"^\d+ validation errors?:\s*\n\s*(\{.*\})\s*$", re.MULTILINE)
# Exception texts of the tokenizer and of torch that reach vLLM's 400 as they are: they
# describe the library's arguments, not the request.
_RAW_LIBRARY_ERRORS = (
    "out of range integral type conversion",
    "cannot be interpreted as an integer",
    "argument 'ids'",
    "argument 'tokens'",
    "index out of range in self",
    "Traceback",
)


def _body_param(param: object) -> str | None:
    """`body.messages.0.content` -> `messages.0.content`: the field as the user sent it."""
    if not isinstance(param, str) or not param:
        return None
    return param.removeprefix("body.").removeprefix("body") or None


def _from_validation_dump(message: str) -> tuple[str, str | None] | None:
    """The first error of vLLM's pydantic dump as `field: what is wrong`, or None."""
    match = _VALIDATION_DUMP.search(message)
    if match is None:
        return None
    try:
        first = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return "the request has an invalid field", None
    if not isinstance(first, dict):
        return "the request has an invalid field", None
    loc = first.get("loc") or ()
    # vLLM 0.32 joins it into `body.top_k` already; pydantic itself gives a tuple.
    loc = [str(p) for p in (loc.split(".") if isinstance(loc, str) else loc) if p != "body"]
    # Union branches (`int`, `str`, `list[...]`) are pydantic's, not fields the user sent.
    loc = [p for p in loc if not re.search(r"[\[\]()]", p) and p not in ("int", "str", "list")]
    param = ".".join(loc) or None
    text = str(first.get("msg") or "invalid value")
    count = int(message.split(" ", 1)[0])
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return (f"{param}: {text}{more}" if param else f"{text}{more}"), param


def upstream_error(status: int, content: bytes, upstream_name: str | None = None,
                   public_name: str | None = None) -> TuneplexError:
    """vLLM's error answer to one request, re-raised as ours. `upstream_name` (the engine's id
    for the model) is replaced by `public_name` (what the user asked for) wherever it appears."""
    try:
        err = json.loads(content)["error"]
        message, param = str(err.get("message") or ""), err.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, param = content[:500].decode(errors="replace"), None
    if upstream_name and public_name:
        message = message.replace(upstream_name, public_name)
    param = _body_param(param)
    if status >= 500:
        log.warning("engine error %s: %s", status, message)
        return Unavailable("the model failed while answering this request; retry shortly")
    if status == 404:
        return NotFound(message or "not found", param=param)
    if status == 429:
        return ResourceExhausted(message or "the model is busy; retry shortly")
    parsed = _from_validation_dump(message)
    if parsed is not None:
        text, dump_param = parsed
        return InvalidArgument(text, param=dump_param or param, code="invalid_request")
    if any(marker in message for marker in _RAW_LIBRARY_ERRORS):
        log.info("engine refused a request with a library error: %s", message)
        return InvalidArgument(
            "the prompt could not be tokenized: token ids must be integers from 0 to the "
            "model's vocabulary size, and text must be a string",
            param=param or "prompt", code="invalid_prompt")
    return InvalidArgument(message or f"the model refused the request ({status})", param=param)
