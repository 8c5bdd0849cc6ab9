"""The registry's side of OpenAI's evals: eval rows (`{"item": ..., "sample": ...}`) as a dataset
format, and an eval definition (`eval.json`) as an artifact kind of its own."""

import json

import pytest

from services.common.errors import InvalidArgument
from services.common.stubs import registry_pb2
from services.registry.convert import info_to_json
from tests.unit.test_registry_dataset_check import check
from tests.unit.test_registry_validation import run_plan

DEFINITION = registry_pb2.ARTIFACT_KIND_EVAL_DEFINITION


def test_eval_rows_are_a_format_of_their_own():
    rows = [
        json.dumps({"item": {"question": "2+2?", "answer": "4"}}),
        json.dumps({"item": {"question": "3+3?"}, "sample": {"output_text": "6"}}),
    ]
    c = check(rows)
    assert (c.format, c.num_examples) == (registry_pb2.DATASET_FORMAT_EVAL_ITEMS, 2)
    # An eval item whose reference field happens to be called "item" stays an eval item.
    assert check([json.dumps({"input": "hi", "item": "x"})]).format == (
        registry_pb2.DATASET_FORMAT_EVAL
    )


@pytest.mark.parametrize(
    ("row", "rule"),
    [
        ({"item": "not an object"}, "item_type"),
        ({"item": {}, "sample": [1]}, "sample_type"),
        ({"item": {}, "extra": 1}, "unknown_field"),
    ],
)
def test_a_bad_eval_row_names_its_line_and_rule(row, rule):
    good = json.dumps({"item": {"q": "x"}})
    with pytest.raises(InvalidArgument) as refused:
        check([good, json.dumps(row)])
    assert "train.jsonl line 2" in refused.value.message
    assert f"(rule: {rule})" in refused.value.message


def definition(**overrides):
    value = {
        "name": "capitals",
        "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
        "testing_criteria": [{"type": "string_check", "name": "exact"}],
        "metadata": {},
    }
    return {**value, **overrides}


def write(tmp_path, value, name="eval.json"):
    folder = tmp_path / "def"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(value))
    return folder


def test_an_eval_definition_is_read_into_its_info(tmp_path):
    info = run_plan(write(tmp_path, definition()), kind=DEFINITION)
    assert (info.display_name, info.num_criteria) == ("capitals", 1)
    assert json.loads(info_to_json(info)) == {
        "eval_definition": {"displayName": "capitals", "numCriteria": 1}
    }


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (definition(testing_criteria=[]), "1 to 32 graders"),
        (definition(testing_criteria=["x"]), "JSON object"),
        (definition(name=3), "'name' must be"),
        ({"name": "x"}, "'data_source_config' must be"),
        (definition(data_source_config={"type": "custom"}), "item_schema"),
        (definition(metadata={"a": 1}), "'metadata' values must be strings"),
        # Its name is the version's display name: a NUL would break the metadata's JSON on
        # PostgreSQL, any control character the listings that show it.
        (definition(name="a\x00b"), "control character U+0000"),
        (definition(name="two\nlines"), "control character U+000A"),
    ],
)
def test_a_malformed_definition_is_refused_with_its_reason(tmp_path, value, words):
    with pytest.raises(InvalidArgument) as refused:
        run_plan(write(tmp_path, value), kind=DEFINITION)
    assert words in refused.value.message and refused.value.code == "eval_definition_invalid"


def test_an_eval_definition_is_one_eval_json(tmp_path):
    with pytest.raises(InvalidArgument, match="exactly one eval.json"):
        run_plan(write(tmp_path, definition(), name="other.json"), kind=DEFINITION)
