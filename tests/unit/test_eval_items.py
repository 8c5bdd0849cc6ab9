"""The rules of one eval-set line (services/common/eval_items.py)."""

from __future__ import annotations

import pytest

from services.common.eval_items import check_eval_item, item_messages


@pytest.mark.parametrize(
    "item",
    [
        {"input": "How many orders?", "sql": "SELECT COUNT(*) FROM orders"},
        {"input": [{"role": "user", "content": "hi"}]},
        {"input": [{"role": "system", "content": "be brief"},
                   {"role": "developer", "content": "SQL only"},
                   {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                   {"role": "user", "content": "q2"}], "ordered": True},
    ],
)
def test_valid_items_pass(item):
    assert check_eval_item(item) is None


@pytest.mark.parametrize(
    "item, rule",
    [
        ([{"input": "x"}], "not_an_object"),
        ("just text", "not_an_object"),
        ({"messages": [{"role": "user", "content": "q"}]}, "missing_input"),
        ({"input": 3}, "input_type"),
        ({"input": {"role": "user", "content": "q"}}, "input_type"),
        ({"input": "   "}, "empty_input"),
        ({"input": []}, "empty_input"),
        ({"input": ["q"]}, "message_type"),
        ({"input": [{"role": "bot", "content": "q"}]}, "bad_role"),
        ({"input": [{"content": "q"}]}, "bad_role"),
        ({"input": [{"role": "user", "content": None}]}, "content_type"),
        ({"input": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]},
         "content_type"),
        ({"input": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
         "last_not_user"),
    ],
)
def test_each_rule_is_named(item, rule):
    broken = check_eval_item(item)
    assert broken is not None and broken[0] == rule
    assert broken[1]  # says why


def test_the_first_broken_message_is_named():
    rule, why = check_eval_item(
        {"input": [{"role": "user", "content": "q"}, {"role": "robot", "content": "x"}]}
    )
    assert rule == "bad_role" and "message 2" in why and "'robot'" in why


def test_item_messages():
    assert item_messages({"input": "q", "sql": "x"}) == [{"role": "user", "content": "q"}]
    messages = [{"role": "system", "content": "s", "name": "ignored"},
                {"role": "user", "content": "q"}]
    assert item_messages({"input": messages}) == [{"role": "system", "content": "s"},
                                                  {"role": "user", "content": "q"}]
