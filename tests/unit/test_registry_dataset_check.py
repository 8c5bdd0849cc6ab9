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


@pytest.mark.parametrize(
    "bad, rule",
    [
        (chat(("system", ""), ("user", "q"), ("assistant", "a")), "empty_content"),
        (chat(("user", " \n"), ("assistant", "a")), "empty_content"),
    ],
)
def test_empty_content_of_any_role_is_refused_as_openai_does(bad, rule):
    """OpenAI's validator counts an empty system or user message as missing content, not only
    an empty assistant one."""
    with pytest.raises(InvalidArgument) as exc:
        check([GOOD, GOOD, bad])
    assert exc.value.message.startswith("train.jsonl line 3: ")
    assert exc.value.message.endswith(f"(rule: {rule})")


def test_every_dataset_error_has_one_stable_code():
    for lines in (["{"], [""], [GOOD, json.dumps({"text": "t"})]):
        with pytest.raises(InvalidArgument) as exc:
            check(lines)
        assert (exc.value.code, exc.value.param) == ("dataset_invalid", "file")


def pair(*messages, preferred="Paris.", non_preferred="London.", **extra) -> str:
    """One line of OpenAI's DPO format; None leaves an output out."""
    record = {"input": {"messages": [{"role": r, "content": c} for r, c in messages]}}
    if preferred is not None:
        record["preferred_output"] = [{"role": "assistant", "content": preferred}]
    if non_preferred is not None:
        record["non_preferred_output"] = [{"role": "assistant", "content": non_preferred}]
    return json.dumps({**record, **extra})


PAIR_GOOD = pair(("system", "be brief"), ("user", "capital of France?"))


def test_preference_pairs_are_sniffed_and_counted():
    multi_turn = pair(("user", "hi"), ("assistant", "hello"), ("user", "capital of France?"))
    c = check([PAIR_GOOD, "", multi_turn, PAIR_GOOD])
    assert (c.format, c.num_examples) == (registry_pb2.DATASET_FORMAT_PREFERENCE, 3)


def _with_output(key: str, value) -> str:
    record = json.loads(PAIR_GOOD)
    record[key] = value
    return json.dumps(record)


@pytest.mark.parametrize(
    "bad, rule, says",
    [
        (pair(("user", "q"), non_preferred=None), "missing_output", "non_preferred_output is"),
        (pair(("user", "q"), preferred=None), "missing_output", "preferred_output is missing"),
        (json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]}}), "", ""),
        (json.dumps({"input": [{"role": "user", "content": "q"}]}), "input_not_object", ""),
        (_with_output("input", "q"), "input_not_object", "'input' must be an object"),
        (_with_output("input", {"messages": []}), "messages_not_list", "input.messages"),
        (
            _with_output("input", {"messages": [{"role": "user", "content": "q"}], "tools": []}),
            "input_unrecognized_key",
            "tools",
        ),
        (pair(("user", "q"), ("assistant", "a")), "input_last_not_user", "end with a user"),
        (pair(("robot", "q")), "bad_role", "input message 1 has role 'robot'"),
        (pair(("system", ""), ("user", "q")), "empty_content", "input message 1 (system)"),
        (
            _with_output(
                "input", {"messages": [{"role": "user", "content": "q", "tool_call_id": "c"}]}
            ),
            "tool_calls_unsupported",
            "input message 1 has tool_call_id",
        ),
        (
            _with_output(
                "input",
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a", "weight": 0},
                        {"role": "user", "content": "q2"},
                    ]
                },
            ),
            "weight_unsupported",
            "input message 2 has a weight",
        ),
        (_with_output("preferred_output", []), "output_not_one_message", "exactly one"),
        (
            _with_output("preferred_output", [{"role": "assistant", "content": "a"}] * 2),
            "output_not_one_message",
            "preferred_output must be",
        ),
        (
            _with_output("non_preferred_output", {"role": "assistant", "content": "a"}),
            "output_not_one_message",
            "non_preferred_output must be",
        ),
        (
            _with_output("preferred_output", [{"role": "user", "content": "a"}]),
            "output_not_assistant",
            "'user'",
        ),
        (_with_output("preferred_output", ["a"]), "message_not_object", "preferred_output"),
        (
            _with_output("non_preferred_output", [{"role": "assistant", "content": " "}]),
            "empty_assistant_message",
            "non_preferred_output message 1 (assistant) is empty",
        ),
        (
            _with_output("preferred_output", [{"role": "assistant", "content": ["a"]}]),
            "non_string_content",
            "must be a string",
        ),
        (
            _with_output("preferred_output", [{"role": "assistant", "content": "a", "x": 1}]),
            "message_unrecognized_key",
            "'x'",
        ),
        (
            _with_output("preferred_output", [{"role": "assistant", "content": "a", "weight": 1}]),
            "weight_unsupported",
            "preferred_output has a weight",
        ),
        (
            _with_output(
                "preferred_output",
                [{"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}],
            ),
            "tool_calls_unsupported",
            "preferred_output message 1 has tool_calls",
        ),
        (pair(("user", "q"), preferred="same", non_preferred="same"), "identical_outputs", ""),
        (pair(("user", "x" * 2000)), "example_too_long", ""),
        (GOOD, "mixed_formats", "chat (messages) record in a preference"),
        (json.dumps({"input": "q", "answer": "4"}), "input_not_object", ""),
        (json.dumps({"answer": "4"}), "missing_input", "'input' is missing"),
    ],
)
def test_preference_rule_and_line_number_in_message(bad, rule, says):
    with pytest.raises(InvalidArgument) as exc:
        check([PAIR_GOOD, PAIR_GOOD, bad, PAIR_GOOD])
    message = exc.value.message
    assert message.startswith("train.jsonl line 3: "), message
    assert message.endswith(f"(rule: {rule or 'missing_output'})"), message
    assert says in message
    assert exc.value.code == "dataset_invalid"


def test_a_preference_line_in_a_chat_or_eval_file_is_mixed():
    for first in (GOOD, EVAL_GOOD):
        with pytest.raises(InvalidArgument, match=r"line 2: preference .* \(rule: mixed_formats\)"):
            check([first, PAIR_GOOD])
