"""The pieces of `/v1/evals` that need no server: OpenAI's testing criteria as tuneplex graders,
a run's data source parsed and its rows rendered into eval set lines, and the counting of an
eval record into OpenAI's result shapes."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import InvalidArgument
from services.evaluation.graders import GraderResources, Sample, build_graders
from services.gateway.evals import criteria, data_source
from services.gateway.evals.definitions import check_config
from services.gateway.evals.runs import _counts, criterion_passed, item_status

SCHEMA = {
    "type": "object",
    "properties": {"input": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["input", "answer"],
}
EXACT = {
    "type": "string_check",
    "name": "Exact match",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "operation": "eq",
}


def completions(**overrides):
    source = {
        "type": "completions",
        "model": "smollm2-135m-instruct",
        "source": {"type": "file_content", "content": [{"item": {"input": "2+2?", "answer": "4"}}]},
        "input_messages": {
            "type": "template",
            "template": [
                {"role": "system", "content": "Answer with a number."},
                {"role": "user", "content": {"type": "input_text", "text": "{{item.input}}"}},
            ],
        },
    }
    return {**source, **overrides}


def test_criteria_grade_the_rows_item_under_their_own_names():
    [spec] = criteria.grader_specs([EXACT])
    assert spec["name"] == "criterion-0"
    # A run's line is {"input": messages, "item": row item}: the template reads inside it.
    assert spec["reference"] == "{{item.item.answer }}"
    [grader] = build_graders([spec], GraderResources())
    line = {
        "input": [{"role": "user", "content": "2+2?"}],
        "item": {"input": "2+2?", "answer": "4"},
    }

    assert asyncio.run(grader.grade(line, Sample("4"))).passed is True
    assert asyncio.run(grader.grade(line, Sample("5"))).passed is False


def test_a_score_model_criterion_in_openai_shape_is_translated():
    judge = {
        "type": "score_model",
        "name": "Judge",
        "model": "smollm2-135m-instruct",
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": {"type": "input_text", "text": "Rate {{sample.output_text}}"},
            },
        ],
        "range": [0, 10],
        "sampling_params": {"max_completions_tokens": 5, "temperature": 0, "seed": None},
    }
    [spec] = criteria.grader_specs([judge])
    assert spec["input"] == [{"role": "user", "content": "Rate {{sample.output_text}}"}]
    assert spec["sampling_params"]["max_tokens"] == 5


@pytest.mark.parametrize(
    ("criterion", "param", "words"),
    [
        ({"type": "label_model", "name": "x"}, "testing_criteria[1].type", "label_model"),
        (
            {"type": "python", "name": "x", "source": "def grade(): ..."},
            "testing_criteria[1].type",
            "runs no user code",
        ),
        ({**EXACT, "operation": "contains"}, "testing_criteria[1].operation", "operation"),
        ({**EXACT, "reference": "{{ itme.answer }}"}, "testing_criteria[1].reference", "itme"),
        (
            {
                "type": "text_similarity",
                "name": "s",
                "input": "{{sample.output_text}}",
                "reference": "x",
                "evaluation_metric": "fuzzy_match",
            },
            "testing_criteria[1].pass_threshold",
            "pass_threshold",
        ),
    ],
)
def test_a_bad_criterion_names_its_field(criterion, param, words):
    with pytest.raises(InvalidArgument) as refused:
        criteria.grader_specs([EXACT, criterion])
    assert refused.value.param == param and words in refused.value.message


def test_an_item_with_a_field_called_input_renders_and_grades():
    source = data_source.parse(completions())
    assert source.sampling == {}
    specs = criteria.grader_specs([EXACT])
    [line] = data_source.render_rows(
        data_source.rows_inline(source.source["content"]),
        source,
        SCHEMA,
        criteria.templates_of(specs),
    )
    assert line == {
        "input": [
            {"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": "2+2?"},
        ],
        "item": {"input": "2+2?", "answer": "4"},
    }


def test_an_item_reference_takes_the_messages_from_the_item():
    source = data_source.parse(
        completions(input_messages={"type": "item_reference", "item_reference": "item.input"})
    )
    [line] = data_source.render_rows(
        data_source.rows_inline(source.source["content"]), source, SCHEMA, []
    )
    assert line["input"] == [{"role": "user", "content": "2+2?"}]


def rendered(rows, schema=SCHEMA, specs=(EXACT,)):
    source = data_source.parse(completions(source={"type": "file_content", "content": rows}))
    templates = criteria.templates_of(criteria.grader_specs(list(specs)))
    return data_source.render_rows(data_source.rows_inline(rows), source, schema, templates)


def test_a_row_against_the_item_schema_is_refused_naming_it():
    good = {"item": {"input": "a", "answer": "b"}}
    with pytest.raises(InvalidArgument) as refused:
        rendered([good, {"item": {"input": "a", "answer": 4}}])
    message = refused.value.message
    assert message.startswith("data_source.source.content[1]: the item does not match")
    assert "at answer" in message and "(rule: item_schema)" in message


def test_a_template_field_the_row_lacks_is_refused_before_anything_runs():
    loose = {"type": "object"}
    with pytest.raises(InvalidArgument) as template:
        rendered([{"item": {"answer": "b"}}], schema=loose)
    assert "input_messages.template[1] reads {{item.input}}" in template.value.message
    with pytest.raises(InvalidArgument) as grader:
        rendered([{"item": {"input": "a"}}], schema=loose)
    assert "a testing criterion reads {{item.answer}}" in grader.value.message


@pytest.mark.parametrize(
    ("overrides", "param", "words"),
    [
        ({"type": "jsonl"}, "data_source.type", "not run here"),
        ({"input_messages": None}, "data_source.input_messages", "is required"),
        ({"model": ""}, "data_source.model", "is required"),
        (
            {"sampling_params": {"response_format": {"type": "json_object"}}},
            "data_source.sampling_params.response_format",
            "not supported",
        ),
        (
            {"sampling_params": {"temprature": 0}},
            "data_source.sampling_params.temprature",
            "unknown",
        ),
        (
            {
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "{{sample.output_text}}"}],
                }
            },
            "data_source.input_messages.template[0].content",
            "reads the sample",
        ),
        (
            {
                "input_messages": {
                    "type": "template",
                    "template": [
                        {"role": "user", "content": {"type": "input_image", "image_url": "x"}}
                    ],
                }
            },
            "data_source.input_messages.template[0].content",
            "only text",
        ),
    ],
)
def test_a_bad_data_source_names_its_field(overrides, param, words):
    with pytest.raises(InvalidArgument) as refused:
        data_source.parse(completions(**overrides))
    assert refused.value.param == param and words in refused.value.message


def test_sampling_params_are_the_eval_jobs():
    source = data_source.parse(
        completions(sampling_params={"temperature": 0.5, "max_completion_tokens": 12, "seed": 3})
    )
    assert source.sampling == {"temperature": 0.5, "max_tokens": 12, "seed": 3}


def test_only_custom_data_source_configs_with_a_real_schema():
    with pytest.raises(InvalidArgument, match="stored completions"):
        check_config({"type": "logs"})
    with pytest.raises(InvalidArgument, match="not a valid JSON schema"):
        check_config({"type": "custom", "item_schema": {"type": "no-such-type"}})
    assert check_config({"type": "custom", "item_schema": SCHEMA})["include_sample_schema"] is False


def result(index, scores, passed, error=None):
    return {
        "index": index,
        "output_text": "",
        "score": 0.0,
        "grader_scores": scores,
        "passed": passed,
        "error": error,
        "seconds": 0.0,
        "attempt": 1,
    }


def test_results_count_as_openai_counts_them():
    graders = ["criterion-0", "criterion-1"]
    results = [
        result(
            0, {"criterion-0": 1.0, "criterion-1": 0.9}, {"criterion-0": True, "criterion-1": True}
        ),
        result(
            1, {"criterion-0": 1.0, "criterion-1": 0.2}, {"criterion-0": True, "criterion-1": False}
        ),
        result(
            2,
            {"criterion-0": 0.0, "criterion-1": 0.0},
            {"criterion-0": None, "criterion-1": None},
            error="sampling_failed: timeout",
        ),
    ]
    counts = _counts(results, graders)
    assert (counts.total, counts.passed, counts.failed, counts.errored) == (3, 1, 1, 1)
    assert [item_status(r, graders) for r in results] == ["pass", "fail", "fail"]
    # A grader with no pass rule of its own passes only a full score.
    no_rule = result(3, {"criterion-0": 1.0}, {"criterion-0": None})
    assert criterion_passed(no_rule, "criterion-0")
    assert not criterion_passed(
        result(4, {"criterion-0": 0.7}, {"criterion-0": None}), "criterion-0"
    )


def test_an_item_schema_that_cannot_be_applied_is_a_400_not_a_500():
    remote = {"$ref": "https://example.com/item.json"}
    with pytest.raises(InvalidArgument) as refused:
        rendered([{"item": {"input": "a", "answer": "b"}}], schema=remote)
    assert refused.value.code == "invalid_item_schema"


@pytest.mark.parametrize(
    ("criterion", "param"),
    [
        ({"type": ["string_check"], "name": "x"}, "testing_criteria[0].type"),
        ({"type": {"a": 1}}, "testing_criteria[0].type"),
        ({**EXACT, "name": ["n"]}, "testing_criteria[0].name"),
    ],
)
def test_a_criterion_of_the_wrong_shape_is_a_400_not_a_500(criterion, param):
    with pytest.raises(InvalidArgument) as refused:
        criteria.grader_specs([criterion])
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -1}, "seed"),
        ({"max_completion_tokens": 10**12}, "max_completion_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_sampling_values_of_the_wrong_type_or_range_are_refused(sampling, field):
    with pytest.raises(InvalidArgument) as refused:
        data_source.parse(completions(sampling_params=sampling))
    assert refused.value.param == f"data_source.sampling_params.{field}"


class _OneOwnerResolver:
    """Resolves only team-a's fine-tuned model (as the gateway's resolver would for team-a)."""

    async def resolve(self, model, *, owner=None):
        from services.common.errors import NotFound

        if model != "ft:base:team-a:x:o1" or owner != "team-a":
            raise NotFound(f"no {model}")
        return object()


class _Datasets:
    async def resolve(self, kind, ref):
        from services.common.stubs import registry_pb2

        owners = {"shop-db": "team-a", "public-db": ""}
        if ref not in owners:
            from services.common.errors import NotFound

            raise NotFound(ref)
        version = registry_pb2.ArtifactVersion(name=ref, version=1)
        if owners[ref]:  # "" is no owner label: everyone's
            version.labels["tuneplex.owner"] = owners[ref]
        return version


def judge(model):
    return {
        "type": "score_model",
        "name": "judge",
        "model": model,
        "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}],
        "range": [0, 1],
    }


def sql(database):
    return {
        "type": "sql_execution",
        "name": "sql",
        "database": database,
        "reference": "{{item.sql}}",
    }


@pytest.mark.parametrize(
    ("owner", "criterion", "refused"),
    [
        ("team-a", judge("ft:base:team-a:x:o1"), None),
        ("team-b", judge("ft:base:team-a:x:o1"), "model_not_found"),  # not hers to ask
        ("team-b", sql("shop-db"), "database_not_found"),
        ("team-b", sql("public-db"), None),  # no owner label: everyone's
    ],
)
async def test_judges_and_databases_must_be_the_callers_to_use(owner, criterion, refused):
    from services.gateway.evals.definitions import EvalStore

    store = EvalStore(_Datasets(), _OneOwnerResolver())  # type: ignore[arg-type]
    specs = criteria.grader_specs([criterion])
    if refused is None:
        await store.check_resources(owner, specs)
        return
    with pytest.raises(InvalidArgument) as error:
        await store.check_resources(owner, specs)
    assert error.value.code == refused
