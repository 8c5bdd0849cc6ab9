"""Line-by-line check of a JSONL training dataset, in the spirit of OpenAI's fine-tuning data
validator. Fed the file's bytes as they stream in; the first broken line fails the upload with
an error that names the file, the 1-based line number and the rule, e.g.
``train.jsonl line 3: assistant message is empty (rule: empty_assistant_message)``.

Formats: chat ``{"messages": [...]}``, ``{"prompt": ..., "completion": ...}``, plain
``{"text": ...}`` for continued pretraining, eval sets ``{"input": ..., <reference fields>}``
(the rules of ``services.common.eval_items``, shared with the eval worker), OpenAI's eval
rows ``{"item": {...}, "sample": {...}}`` (what `/v1/evals` runs read), and preference
pairs, OpenAI's DPO format ``{"input": {"messages": [...]}, "preferred_output": [<assistant
message>], "non_preferred_output": [<assistant message>]}``. One file holds one format, set by
its first example.

Against OpenAI's rules (the fine-tuning guide and its cookbook validator): each line a JSON
object, a ``messages`` list, roles system/user/assistant/tool, string content that is not
empty (``empty_content``), at least one assistant message, ``weight`` 0/1. OpenAI's minimum
of 10 examples is not a dataset rule here (an eval set or a smoke test may be smaller): the
gateway applies it to ``purpose=fine-tune`` files from ``DatasetInfo.num_examples``.
"""

from __future__ import annotations

import json

from services.common.chat_messages import check_message_extras, is_trained
from services.common.errors import InvalidArgument, shown
from services.common.eval_items import INPUT_KEY, check_eval_item
from services.common.stubs import registry_pb2
from services.registry.jsonl_stream import LineSplitter

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id"}
PREFERRED, NON_PREFERRED = "preferred_output", "non_preferred_output"
# OpenAI's input object also takes tools; tool calls cannot be trained here (chat_messages).
PREFERENCE_INPUT_KEYS = {"messages"}
FORMAT_NAMES = {
    registry_pb2.DATASET_FORMAT_CHAT: "chat (messages)",
    registry_pb2.DATASET_FORMAT_PROMPT_COMPLETION: "prompt/completion",
    registry_pb2.DATASET_FORMAT_TEXT: "text",
    registry_pb2.DATASET_FORMAT_EVAL: "eval (input)",
    registry_pb2.DATASET_FORMAT_PREFERENCE: "preference (input, preferred_output, "
    "non_preferred_output)",
    registry_pb2.DATASET_FORMAT_EVAL_ITEMS: "eval items (item)",
}
ITEM, SAMPLE = "item", "sample"
# The stable code of every failed line; the rule in the message says which one.
CODE = "dataset_invalid"


class DatasetCheck:
    def __init__(self, path: str, *, max_example_chars: int):
        self.path = path
        self.max_chars = max_example_chars
        self.format = registry_pb2.DATASET_FORMAT_UNSPECIFIED
        self.num_examples = 0
        self._line = 0
        self._format_line = 0
        # A line longer than any allowed example cannot pass; stop buffering it then. Bytes
        # bound characters from above only loosely (UTF-8 is up to 4 bytes per char), hence x4.
        self._lines = LineSplitter(self._check_line, 4 * max_example_chars + 65536, self._too_long)

    def _fail(self, rule: str, why: str) -> InvalidArgument:
        return InvalidArgument(
            f"{self.path} line {self._line}: {why} (rule: {rule})", param="file", code=CODE
        )

    def feed(self, data: bytes) -> None:
        self._lines.feed(data)

    def _too_long(self) -> None:
        self._line += 1
        raise self._fail(
            "example_too_long", f"line is over the limit of {self.max_chars} characters"
        )

    def finish(self) -> None:
        self._lines.finish()
        if self.num_examples == 0:
            raise InvalidArgument(
                f"{self.path}: no examples (rule: no_examples)", param="file", code=CODE
            )

    def _check_line(self, raw: bytes) -> None:
        self._line += 1
        if not raw.strip():
            return  # blank lines, such as a trailing newline, are not examples
        try:
            record = json.loads(raw)
        except UnicodeDecodeError:
            raise self._fail("invalid_utf8", "line is not valid UTF-8") from None
        except ValueError as exc:
            raise self._fail("invalid_json", f"invalid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise self._fail("not_an_object", "each line must be a JSON object")
        fmt = _format_of(record)
        if self.format == registry_pb2.DATASET_FORMAT_PREFERENCE and fmt in (
            registry_pb2.DATASET_FORMAT_UNSPECIFIED,
            registry_pb2.DATASET_FORMAT_EVAL,
        ):
            fmt = self.format  # a pair without its outputs: the preference rules say which
        if fmt == registry_pb2.DATASET_FORMAT_UNSPECIFIED:
            if self.format == registry_pb2.DATASET_FORMAT_EVAL:
                fmt = self.format  # an eval item without its input: the eval rule says so
            else:
                raise self._fail(
                    "missing_messages",
                    "no 'messages' (chat), 'prompt'+'completion', 'text', 'input' (eval), "
                    f"'item' (eval rows) or 'input'+'{PREFERRED}'+'{NON_PREFERRED}' "
                    "(preference) field",
                )
        if self.format == registry_pb2.DATASET_FORMAT_UNSPECIFIED:
            self.format, self._format_line = fmt, self._line
        elif fmt != self.format:
            raise self._fail(
                "mixed_formats",
                f"{FORMAT_NAMES[fmt]} record in a {FORMAT_NAMES[self.format]} file "
                f"(format set by line {self._format_line})",
            )
        if fmt == registry_pb2.DATASET_FORMAT_CHAT:
            chars = self._check_chat(record["messages"])
        elif fmt == registry_pb2.DATASET_FORMAT_PROMPT_COMPLETION:
            chars = self._check_prompt_completion(record)
        elif fmt == registry_pb2.DATASET_FORMAT_EVAL:
            chars = self._check_eval(record)
        elif fmt == registry_pb2.DATASET_FORMAT_PREFERENCE:
            chars = self._check_preference(record)
        elif fmt == registry_pb2.DATASET_FORMAT_EVAL_ITEMS:
            chars = self._check_eval_items(record)
        else:
            chars = self._check_text(record["text"])
        if chars > self.max_chars:
            raise self._fail(
                "example_too_long",
                f"example is {chars} characters, over the limit of {self.max_chars}",
            )
        self.num_examples += 1

    def _check_chat(self, messages) -> int:
        if not isinstance(messages, list) or not messages:
            raise self._fail("messages_not_list", "'messages' must be a non-empty list")
        chars, has_assistant, trained = 0, False, False
        for i, msg in enumerate(messages, start=1):
            chars += self._check_message(msg, i)
            if msg["role"] == "assistant":
                has_assistant = True
                trained = trained or is_trained(msg)
        if not has_assistant:
            raise self._fail("no_assistant_message", "no assistant message to learn from")
        if not trained:
            raise self._fail(
                "no_trained_assistant_message",
                "every assistant message has weight 0: nothing to learn from",
            )
        return chars

    def _check_message(self, msg, i: int, where: str = "") -> int:
        """The rules of one chat message (``where`` prefixes its name, e.g. ``input ``);
        returns its length in characters."""
        if not isinstance(msg, dict):
            raise self._fail("message_not_object", f"{where}message {i} is not an object")
        unknown = sorted(set(msg) - MESSAGE_KEYS)
        if unknown:
            raise self._fail(
                "message_unrecognized_key",
                f"{where}message {i} has unrecognized key(s) {unknown}",
            )
        role = msg.get("role")
        if role not in ROLES:
            raise self._fail(
                "bad_role",
                f"{where}message {i} has role {shown(role, 40)}; expected one of {list(ROLES)}",
            )
        broken = check_message_extras(msg, i)
        if broken is not None:
            rule, why = broken
            raise self._fail(rule, where + why)
        content = msg.get("content")
        if not isinstance(content, str):
            raise self._fail(
                "non_string_content",
                f"{where}message {i} ({role}) content must be a string, got "
                f"{type(content).__name__ if content is not None else 'nothing'}",
            )
        if not content.strip():
            if role == "assistant":
                raise self._fail(
                    "empty_assistant_message", f"{where}message {i} (assistant) is empty"
                )
            # OpenAI's validator counts empty content of any role as missing content.
            raise self._fail("empty_content", f"{where}message {i} ({role}) is empty")
        return len(content)

    def _check_preference(self, record: dict) -> int:
        """OpenAI's DPO line: a chat context ending with the user's turn, and one preferred
        and one non-preferred assistant answer to it."""
        value = record.get(INPUT_KEY)
        if value is None:
            raise self._fail("missing_input", "'input' is missing")
        if not isinstance(value, dict):
            raise self._fail("input_not_object", "'input' must be an object with 'messages'")
        unknown = sorted(set(value) - PREFERENCE_INPUT_KEYS)
        if unknown:
            raise self._fail("input_unrecognized_key", f"'input' has unrecognized key(s) {unknown}")
        messages = value.get("messages")
        if not isinstance(messages, list) or not messages:
            raise self._fail("messages_not_list", "input.messages must be a non-empty list")
        chars = 0
        for i, msg in enumerate(messages, start=1):
            if isinstance(msg, dict) and "weight" in msg:
                raise self._fail(
                    "weight_unsupported",
                    f"input message {i} has a weight: a preference pair is trained on its "
                    "outputs only",
                )
            chars += self._check_message(msg, i, "input ")
        if messages[-1]["role"] != "user":
            raise self._fail(
                "input_last_not_user",
                "input.messages must end with a user message: the outputs answer it",
            )
        preferred = self._check_output(record, PREFERRED)
        non_preferred = self._check_output(record, NON_PREFERRED)
        if preferred == non_preferred:
            raise self._fail(
                "identical_outputs",
                f"{PREFERRED} and {NON_PREFERRED} are the same text: nothing to prefer",
            )
        return chars + len(preferred) + len(non_preferred)

    def _check_output(self, record: dict, key: str) -> str:
        """The content of the one assistant message that ``record[key]`` must be."""
        if key not in record:
            raise self._fail("missing_output", f"{key} is missing")
        value = record[key]
        if not isinstance(value, list) or len(value) != 1:
            raise self._fail(
                "output_not_one_message", f"{key} must be a list of exactly one assistant message"
            )
        msg = value[0]
        if isinstance(msg, dict) and "weight" in msg:
            raise self._fail("weight_unsupported", f"{key} has a weight: both outputs are trained")
        if isinstance(msg, dict) and msg.get("role") != "assistant":
            raise self._fail(
                "output_not_assistant",
                f"{key} message has role {shown(msg.get('role'), 40)}; it must be 'assistant'",
            )
        self._check_message(msg, 1, f"{key} ")
        return msg["content"]

    def _check_prompt_completion(self, record: dict) -> int:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise self._fail("non_string_content", "'prompt' and 'completion' must both be strings")
        if not completion.strip():
            raise self._fail("empty_completion", "'completion' is empty")
        return len(prompt) + len(completion)

    def _check_text(self, text) -> int:
        if not isinstance(text, str):
            raise self._fail("non_string_content", "'text' must be a string")
        if not text.strip():
            raise self._fail("empty_text", "'text' is empty")
        return len(text)

    def _check_eval(self, record: dict) -> int:
        broken = check_eval_item(record)
        if broken is not None:
            raise self._fail(*broken)
        value = record[INPUT_KEY]
        if isinstance(value, str):
            return len(value)
        return sum(len(m["content"]) for m in value)


    def _check_eval_items(self, record: dict) -> int:
        # OpenAI's rows: the item is free-form (an eval's item_schema says what it must hold,
        # checked when a run reads the file); a sample, when given, is an object too.
        extra = sorted(set(record) - {ITEM, SAMPLE})
        if extra:
            raise self._fail(
                "unknown_field",
                f"an eval row holds only 'item' and 'sample'; not {shown(extra[0], 40)}",
            )
        if not isinstance(record[ITEM], dict):
            raise self._fail("item_type", "'item' must be a JSON object")
        if SAMPLE in record and not isinstance(record[SAMPLE], dict):
            raise self._fail("sample_type", "'sample' must be a JSON object")
        return len(json.dumps(record, ensure_ascii=False))


def _format_of(record: dict) -> registry_pb2.DatasetFormat:
    if "messages" in record:
        return registry_pb2.DATASET_FORMAT_CHAT
    # Before eval: a preference pair has an "input" too, an object where an eval item's input
    # is a list of messages or a string.
    if PREFERRED in record or NON_PREFERRED in record or isinstance(record.get(INPUT_KEY), dict):
        return registry_pb2.DATASET_FORMAT_PREFERENCE
    if "prompt" in record or "completion" in record:
        return registry_pb2.DATASET_FORMAT_PROMPT_COMPLETION
    if "text" in record:
        return registry_pb2.DATASET_FORMAT_TEXT
    if INPUT_KEY in record:
        return registry_pb2.DATASET_FORMAT_EVAL
    # After eval: an eval item may have a reference field named "item" beside its input.
    if ITEM in record:
        return registry_pb2.DATASET_FORMAT_EVAL_ITEMS
    return registry_pb2.DATASET_FORMAT_UNSPECIFIED
