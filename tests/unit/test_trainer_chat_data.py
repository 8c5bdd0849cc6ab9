"""Assistant masks from the model's own chat template, and the pre-training refusal of a dataset
whose first example would teach nothing or would train on the prompt."""

from __future__ import annotations

import itertools
import json

import pytest

from services.common.errors import InvalidArgument
from services.trainer.recipes.chat_data import (
    check_assistant_mask,
    pack_text_file,
    to_messages,
    tokenize_chat_file,
    tokenize_conversation,
    truncate_examples,
)


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


def masked_text(tokenizer, example) -> str:
    ids = [t for t, m in zip(example["input_ids"], example["assistant_masks"], strict=True) if m]
    return tokenizer.decode(ids)


def test_only_assistant_turns_are_trained_on_in_multi_turn_chats(tokenizer):
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    example = tokenize_conversation(tokenizer, messages, train_on_prompt=False)
    assert masked_text(tokenizer, example) == "4<|im_end|>\n6<|im_end|>\n"
    everything = tokenize_conversation(tokenizer, messages, train_on_prompt=True)
    assert all(everything["assistant_masks"])


def test_an_assistant_turn_of_weight_0_is_context_not_target(tokenizer, tmp_path):
    """The first assistant turn has weight 0: exactly its tokens leave the mask (TRL gives
    them label -100), the conversation's tokens stay the same, the later turn is trained."""
    turns = [("user", "2+2?"), ("assistant", "4"), ("user", "3+3?"), ("assistant", "6")]
    chat = [{"role": r, "content": c} for r, c in turns]
    chat[1]["weight"] = 0
    chat[3]["weight"] = 1
    path = tmp_path / "weighted.jsonl"
    path.write_text(json.dumps({"messages": chat}) + "\n")
    (example,) = tokenize_chat_file(path, tokenizer, 1024, train_on_prompt=False)
    plain = [{"role": r, "content": c} for r, c in turns]
    unweighted = tokenize_conversation(tokenizer, plain, train_on_prompt=False)
    assert example["input_ids"] == unweighted["input_ids"]
    assert masked_text(tokenizer, example) == "6<|im_end|>\n"
    dropped = [
        t
        for t, now, before in zip(
            example["input_ids"],
            example["assistant_masks"],
            unweighted["assistant_masks"],
            strict=True,
        )
        if before and not now
    ]
    assert tokenizer.decode(dropped) == "4<|im_end|>\n"
    everything = tokenize_conversation(tokenizer, to_messages({"messages": chat}, 1), True)
    masks = zip(everything["input_ids"], everything["assistant_masks"], strict=True)
    kept_out = [t for t, m in masks if not m]
    assert tokenizer.decode(kept_out) == "4<|im_end|>\n"


def test_prompt_completion_rows_become_chats(tokenizer):
    messages = to_messages({"prompt": "hi", "completion": "hello"}, 1)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    example = tokenize_conversation(tokenizer, messages, train_on_prompt=False)
    assert masked_text(tokenizer, example) == "hello<|im_end|>\n"


def test_an_empty_mask_within_max_seq_length_is_refused(tokenizer):
    messages = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    example = tokenize_conversation(tokenizer, messages, train_on_prompt=False)
    with pytest.raises(InvalidArgument, match="raise max_seq_length") as caught:
        check_assistant_mask(example, max_seq_length=64, train_on_prompt=False)
    assert caught.value.param == "training.hyperparameters.max_seq_length"
    check_assistant_mask(example, max_seq_length=1024, train_on_prompt=False)


def test_an_all_ones_mask_is_refused_unless_training_on_the_prompt():
    example = {"input_ids": [1, 2, 3], "assistant_masks": [1, 1, 1]}
    with pytest.raises(InvalidArgument, match="train_on_prompt"):
        check_assistant_mask(example, max_seq_length=16, train_on_prompt=False)
    check_assistant_mask(example, max_seq_length=16, train_on_prompt=True)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "line 1 is not JSON"),
        ('{"text": "no chat"}', "neither `messages` nor `prompt`+`completion`"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"messages": [{"role": "wizard", "content": "hi"}]}', "role in"),
        (
            '{"messages": [{"role": "user", "content": "q"}, '
            '{"role": "assistant", "content": "a", "weight": 2}]}',
            "rule: invalid_weight",
        ),
        (
            '{"messages": [{"role": "user", "content": "q", "weight": 0}, '
            '{"role": "assistant", "content": "a"}]}',
            "rule: weight_not_on_assistant",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, '
            '{"role": "assistant", "content": "", "tool_calls": []}]}',
            "rule: tool_calls_unsupported",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, '
            '{"role": "assistant", "content": "a", "weight": 0}]}',
            "nothing to learn",
        ),
    ],
)
def test_malformed_rows_are_refused_with_the_line(tokenizer, tmp_path, line, says):
    path = tmp_path / "data.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InvalidArgument) as caught:
        tokenize_chat_file(path, tokenizer, 128, train_on_prompt=False)
    assert says in caught.value.message
    assert caught.value.code == "dataset_invalid"


def test_pretraining_text_is_packed_into_full_blocks(tokenizer, tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text('{"text": "' + "alpha beta gamma " * 30 + '"}\n{"text": "delta"}\n')
    blocks = pack_text_file(path, tokenizer, block=16)
    assert blocks and all(len(b["input_ids"]) == 16 for b in blocks)
    with pytest.raises(InvalidArgument, match="lower max_seq_length"):
        pack_text_file(path, tokenizer, block=100_000)


def test_packed_blocks_keep_each_documents_boundaries(tokenizer, tmp_path):
    """Each block's ``seq_lengths`` are its document pieces: they end right after an EOS (or
    at the block's end), so the padding-free collator restarts positions at each document."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    path = tmp_path / "text.jsonl"
    docs = ["one two three four five", "six seven", "eight nine ten eleven twelve thirteen"] * 4
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    blocks = pack_text_file(path, tokenizer, block=16)
    eos = tokenizer.eos_token_id
    for block in blocks:
        assert sum(block["seq_lengths"]) == 16
        ends = list(itertools.accumulate(block["seq_lengths"]))
        assert all(block["input_ids"][end - 1] == eos for end in ends[:-1])
        assert [i + 1 for i, t in enumerate(block["input_ids"]) if t == eos] == [
            e for e in ends if block["input_ids"][e - 1] == eos
        ]
    assert any(len(b["seq_lengths"]) > 1 for b in blocks)
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([{**b, "labels": b["input_ids"]} for b in blocks[:2]])
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert (
        starts
        == [0, *itertools.accumulate(blocks[0]["seq_lengths"] + blocks[1]["seq_lengths"])][:-1]
    )


def test_examples_are_cut_to_max_seq_length_and_emptied_ones_dropped():
    examples = [
        {"input_ids": list(range(10)), "assistant_masks": [0] * 6 + [1] * 4},
        {"input_ids": list(range(4)), "assistant_masks": [0, 1, 1, 1]},
    ]
    kept = truncate_examples(examples, 5, "x.jsonl")
    assert kept == [{"input_ids": [0, 1, 2, 3], "assistant_masks": [0, 1, 1, 1]}]
    with pytest.raises(InvalidArgument, match="max_seq_length=2"):
        truncate_examples(examples[:1], 2, "x.jsonl")
