import json

import pytest

from services.common.errors import InvalidArgument
from services.common.stubs import registry_pb2
from services.registry.dataset_check import DatasetCheck


def check(lines: list[str], *, chunk: int = 7, max_chars: int = 1000) -> DatasetCheck:
    """Feed in small chunks so that lines are split across chunks, as on the wire."""
    data = ("\n".join(lines) + "\n").encode()
    c = DatasetCheck("train.jsonl", max_example_chars=max_chars)
    for i in range(0, len(data), chunk):
        c.feed(data[i : i + chunk])
    c.finish()
    return c


def chat(*messages) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]})


GOOD = chat(("system", "be brief"), ("user", "hi"), ("assistant", "hello"))


def test_valid_formats_are_counted():
    c = check([GOOD, "", GOOD])
    assert (c.format, c.num_examples) == (registry_pb2.DATASET_FORMAT_CHAT, 2)
    pc = check([json.dumps({"prompt": "2+2=", "completion": "4"})])
    assert pc.format == registry_pb2.DATASET_FORMAT_PROMPT_COMPLETION
    assert check([json.dumps({"text": "once upon"})]).format == registry_pb2.DATASET_FORMAT_TEXT


@pytest.mark.parametrize(
    "bad, rule",
    [
        ('{"messages": [', "invalid_json"),
        ("[1, 2]", "not_an_object"),
        (json.dumps({"input_": "x"}), "missing_messages"),
        (json.dumps({"input": "x"}), "mixed_formats"),
        (json.dumps({"messages": []}), "messages_not_list"),
        (json.dumps({"messages": ["hi"]}), "message_not_object"),
        (chat(("user", "q"), ("bot", "a")), "bad_role"),
        (json.dumps({"messages": [{"role": "user", "content": 3}]}), "non_string_content"),
        (chat(("user", "q"), ("assistant", "  ")), "empty_assistant_message"),
        (chat(("system", "s"), ("user", "q")), "no_assistant_message"),
        (chat(("user", "x" * 2000), ("assistant", "a")), "example_too_long"),
        (
            json.dumps({"messages": [{"role": "user", "content": "q", "foo": 1}]}),
            "message_unrecognized_key",
        ),
        (json.dumps({"text": "plain"}), "mixed_formats"),
        (json.dumps({"prompt": "p", "completion": ""}), "mixed_formats"),
    ],
)
def test_rule_and_line_number_in_message(bad, rule):
    with pytest.raises(InvalidArgument) as exc:
        check([GOOD, GOOD, bad, GOOD])
    assert exc.value.message.startswith("train.jsonl line 3: ")
    assert f"(rule: {rule})" in exc.value.message


def weighted(user_weight=None, *assistant_weights) -> str:
    """A chat whose user turn and assistant turns carry the given weights (None: no weight)."""
    messages = [{"role": "user", "content": "q"}]
    if user_weight is not None:
        messages[0]["weight"] = user_weight
    for n, weight in enumerate(assistant_weights or (None,)):
        messages.append({"role": "assistant", "content": f"a{n}"})
        if weight is not None:
            messages[-1]["weight"] = weight
        messages.append({"role": "user", "content": "more?"})
    return json.dumps({"messages": messages[:-1]})


def test_assistant_weights_of_0_and_1_are_accepted():
    assert (
        check([weighted(None, 0, 1), weighted(None, 1), weighted(None, None, 0)]).num_examples == 3
    )


@pytest.mark.parametrize(
    "bad, rule",
    [
        (weighted(None, 2), "invalid_weight"),
        (weighted(None, 0.5), "invalid_weight"),
        (weighted(None, True), "invalid_weight"),
        (weighted(None, "1"), "invalid_weight"),
        (weighted(1, 1), "weight_not_on_assistant"),
        (weighted(None, 0, 0), "no_trained_assistant_message"),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "weather?"},
                        {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [{"id": "c1", "type": "function"}],
                        },
                        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                        {"role": "assistant", "content": "sunny"},
                    ]
                }
            ),
            "tool_calls_unsupported",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "tool", "content": "r", "tool_call_id": "c1"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ),
            "tool_calls_unsupported",
        ),
    ],
)
def test_what_the_trainer_would_not_train_as_written_is_refused(bad, rule):
    """Weights other than 0/1 or off assistant turns, and tool calls: the trainer cannot train
    them as the file says, so the upload is refused, naming the line and the rule."""
    with pytest.raises(InvalidArgument) as exc:
        check([GOOD, GOOD, bad, GOOD])
    assert exc.value.message.startswith("train.jsonl line 3: ")
    assert exc.value.message.endswith(f"(rule: {rule})")


def test_empty_completion_and_text():
    with pytest.raises(InvalidArgument, match="line 1: .*empty_completion"):
        check([json.dumps({"prompt": "p", "completion": " "})])
    with pytest.raises(InvalidArgument, match="line 2: .*empty_text"):
        check([json.dumps({"text": "a"}), json.dumps({"text": ""})])


def test_no_examples_and_invalid_utf8():
    with pytest.raises(InvalidArgument, match="no_examples"):
        check(["", "  "])
    c = DatasetCheck("d.jsonl", max_example_chars=100)
    with pytest.raises(InvalidArgument, match="line 1: .*invalid_utf8"):
        c.feed(b'{"text": "\xff"}\n')


def test_huge_line_is_refused_before_it_is_buffered():
    c = DatasetCheck("d.jsonl", max_example_chars=10)
    with pytest.raises(InvalidArgument, match="line 1: .*example_too_long"):
        for _ in range(100):
            c.feed(b"x" * 4096)


def item(*messages, **fields) -> str:
    return json.dumps({"input": [{"role": r, "content": c} for r, c in messages], **fields})


EVAL_GOOD = item(("system", "answer in SQL"), ("user", "all items?"), sql="SELECT * FROM items")


def test_eval_set_is_sniffed_and_counted():
    c = check([EVAL_GOOD, json.dumps({"input": "plain question", "answer": "4"}), ""])
    assert (c.format, c.num_examples) == (registry_pb2.DATASET_FORMAT_EVAL, 2)


@pytest.mark.parametrize(
    "bad, rule",
    [
        (json.dumps({"sql": "SELECT 1"}), "missing_input"),
        (json.dumps({"input": 3}), "input_type"),
        (json.dumps({"input": []}), "empty_input"),
        (json.dumps({"input": "  "}), "empty_input"),
        (json.dumps({"input": ["hi"]}), "message_type"),
        (item(("robot", "q")), "bad_role"),
        (json.dumps({"input": [{"role": "user", "content": ["x"]}]}), "content_type"),
        (item(("user", "q"), ("assistant", "a")), "last_not_user"),
        (item(("user", "x" * 2000)), "example_too_long"),
        (chat(("user", "q"), ("assistant", "a")), "mixed_formats"),
    ],
)
def test_eval_rule_and_line_number_in_message(bad, rule):
    with pytest.raises(InvalidArgument) as exc:
        check([EVAL_GOOD, bad])
    assert exc.value.message.startswith("train.jsonl line 2: ")
    assert f"(rule: {rule})" in exc.value.message
