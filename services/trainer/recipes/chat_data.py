"""Chat datasets -> token ids with an assistant mask, rendered by the model's own chat template.

TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers that most templates (SmolLM2's
included) lack, and its ``completion_only_loss`` trains only the last turn. So the mask is
computed here for every assistant turn: the template renders each conversation prefix, the
characters an assistant turn adds are assistant text, and the tokenizer's offsets map them onto
tokens. An assistant turn with ``weight`` 0 (``services.common.chat_messages``) stays in the
context but out of the mask. TRL then takes the pre-tokenized rows (``input_ids`` +
``assistant_masks``) and builds labels (-100 where the mask is 0) itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

from services.common.chat_messages import check_message_extras, is_trained
from services.common.errors import InvalidArgument

ROLES = ("system", "user", "assistant", "tool")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bad(message: str, param: str = "training.dataset") -> InvalidArgument:
    return InvalidArgument(message, param=param, code="dataset_invalid")


def read_jsonl(path: Path, param: str = "training.dataset") -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(f"{path.name} line {n} is not JSON ({exc.msg})", param) from None
            if not isinstance(row, dict):
                raise _bad(f"{path.name} line {n} is not a JSON object", param)
            rows.append(row)
    if not rows:
        raise _bad(f"{path.name} has no examples", param)
    return rows


def to_messages(row: dict, n: int, param: str = "training.dataset") -> list[dict]:
    """A row as chat messages: ``{"messages": [...]}`` or ``{"prompt": str, "completion": str}``."""
    if "messages" in row:
        messages = row["messages"]
    elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    else:
        raise _bad(
            f"example {n} has neither `messages` nor `prompt`+`completion`; write one JSON object "
            'per line like {"messages": [{"role": "user", "content": "..."}, '
            '{"role": "assistant", "content": "..."}]}',
            param,
        )
    if not isinstance(messages, list) or not messages:
        raise _bad(f"example {n}: `messages` must be a non-empty list", param)
    for i, m in enumerate(messages, 1):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise _bad(
                f"example {n}: each message needs a role in {ROLES} and a string content", param
            )
        # The registry refuses these at upload; a dataset stored before it did is refused here,
        # rather than trained otherwise than it says.
        broken = check_message_extras(m, i)
        if broken is not None:
            raise _bad(f"example {n}: {broken[1]} (rule: {broken[0]})", param)
    if not any(m["role"] == "assistant" for m in messages):
        raise _bad(f"example {n} has no assistant message to learn from", param)
    if not any(is_trained(m) for m in messages):
        raise _bad(f"example {n}: every assistant message has weight 0, nothing to learn", param)
    return [_kept(m) for m in messages]


def _kept(message: dict) -> dict:
    """What a message is to the trainer: role, content and, when it says so, weight 0."""
    kept = {"role": message["role"], "content": message["content"]}
    if not is_trained(message) and message["role"] == "assistant":
        kept["weight"] = 0
    return kept


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    shown_to_template = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(
        shown_to_template, tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_spans(
    tokenizer, messages: list[dict]
) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns: those
    trained on, and those with weight 0."""
    text = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    untrained: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        through = _render(tokenizer, messages[: i + 1], False)
        if not (text.startswith(through) and through.startswith(before)):
            raise InvalidArgument(
                "the base model's chat template does not render conversation prefixes "
                "consistently, so assistant tokens cannot be told apart; set train_on_prompt "
                "to train on every token",
                param="training.hyperparameters.train_on_prompt",
                code="dataset_invalid",
            )
        (spans if is_trained(m) else untrained).append((len(before), len(through)))
    return text, spans, untrained


def tokenize_conversation(tokenizer, messages: list[dict], train_on_prompt: bool) -> dict:
    """``input_ids`` and ``assistant_masks`` (1 where the loss applies) of one conversation.
    ``train_on_prompt`` trains on every token but those of weight-0 assistant turns."""
    text, spans, untrained = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in enc["offset_mapping"]]
    if train_on_prompt:
        mask = [int(not any(a <= start < b for a, b in untrained)) for start in starts]
    else:
        mask = [int(any(a <= start < b for a, b in spans)) for start in starts]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}


def check_assistant_mask(example: dict, max_seq_length: int, train_on_prompt: bool) -> None:
    """Refuse before training a dataset whose rendered first example would teach nothing
    (no assistant token within ``max_seq_length``) or would train on the prompt by accident."""
    mask = example["assistant_masks"][:max_seq_length]
    if not any(mask):
        raise InvalidArgument(
            f"the first example has no assistant token within max_seq_length={max_seq_length} "
            f"(it renders to {len(example['assistant_masks'])} tokens): raise max_seq_length or "
            "shorten the prompts",
            param="training.hyperparameters.max_seq_length",
            code="dataset_invalid",
        )
    if all(mask) and not train_on_prompt:
        raise InvalidArgument(
            "every token of the first example is marked as assistant text, so the prompt would be "
            "trained on: the chat template does not separate prompt from reply; fix the dataset's "
            "roles, or set train_on_prompt if that is intended",
            param="training.dataset",
            code="dataset_invalid",
        )


def tokenize_chat_file(
    path: Path,
    tokenizer,
    max_seq_length: int,
    train_on_prompt: bool,
    param: str = "training.dataset",
) -> list[dict]:
    rows = read_jsonl(path, param)
    examples = [
        tokenize_conversation(tokenizer, to_messages(row, n, param), train_on_prompt)
        for n, row in enumerate(rows, 1)
    ]
    check_assistant_mask(examples[0], max_seq_length, train_on_prompt)
    return truncate_examples(examples, max_seq_length, path.name, param)


def truncate_examples(
    examples: list[dict], max_seq_length: int, name: str, param: str = "training.dataset"
) -> list[dict]:
    """Each example cut to its first ``max_seq_length`` tokens, and those left with no token
    to train on dropped, as TRL's own truncation does; done here because TRL does not truncate
    padding-free batches."""
    kept = []
    for example in examples:
        cut = {key: value[:max_seq_length] for key, value in example.items()}
        if any(cut["assistant_masks"]):
            kept.append(cut)
    if not kept:
        raise _bad(
            f"{name}: no example has an assistant token within max_seq_length={max_seq_length}; "
            "raise max_seq_length or shorten the prompts",
            param,
        )
    return kept


def pack_text_file(
    path: Path, tokenizer, block: int, param: str = "training.dataset"
) -> list[dict]:
    """Continued pretraining data: ``{"text": ...}`` rows, EOS-joined and cut into full blocks.

    Each block carries ``seq_lengths``, the lengths of the document pieces it holds (a document
    cut by a block boundary continues in the next block as a piece of its own): TRL's
    padding-free collator restarts position ids at each piece, so a document never attends to
    the one before it in the block."""
    ids: list[int] = []
    ends: list[int] = []  # where each document (with its EOS) ends in ``ids``
    for n, row in enumerate(read_jsonl(path, param), 1):
        if not isinstance(row.get("text"), str):
            raise _bad(f'example {n} has no string `text`; write {{"text": "..."}} per line', param)
        ids.extend(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
        ends.append(len(ids))
    blocks = []
    for start in range(0, len(ids) - block + 1, block):
        stop = start + block
        cuts = [start, *(e for e in ends if start < e < stop), stop]
        blocks.append(
            {
                "input_ids": ids[start:stop],
                "seq_lengths": [b - a for a, b in itertools.pairwise(cuts)],
            }
        )
    if not blocks:
        raise _bad(
            f"{path.name} has {len(ids)} tokens, fewer than one block of max_seq_length={block}; "
            "add text or lower max_seq_length",
            param,
        )
    return blocks
