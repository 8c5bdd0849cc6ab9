"""OpenAI's evals API with the unmodified `openai` SDK: an eval with a string_check and a
text_similarity criterion, run against the base model and a model fine-tuned here, results read
back through `client.evals.runs` (counts, per-criterion results, output items).

The fine-tune teaches a format (`CAPITAL: LIMA`) the base model never writes, so the
`string_check` for that format is a measure both ways: the base must score 0 on it and the
fine-tuned model must beat it. The runs are eval jobs of the session's trainer sampling through
the session's gateway.
"""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from services.evaluation.graders.text_similarity import similarity
from tests.e2e.conftest import BASE
from tests.e2e.test_openai_fine_tuning import client_for, upload, wait_status
from tests.helpers.sample_data import CAPITALS, chat_examples

pytestmark = pytest.mark.e2e

FORMAT = "CAPITAL:"
# fuzzy_match of "CAPITAL: <a capital>" against "CAPITAL: LIMA" is above this; of the base
# model's prose ("The capital of Peru is Lima.") below.
SIMILAR = 0.6
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"country": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["country", "answer"],
}
CRITERIA = [
    {
        "type": "string_check",
        "name": "Answers in the format",
        "input": "{{sample.output_text}}",
        "reference": FORMAT,
        "operation": "like",
    },
    {
        "type": "text_similarity",
        "name": "Close to the answer",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": SIMILAR,
    },
]
INPUT = {
    "type": "template",
    "template": [{"role": "user", "content": "What is the capital of {{item.country}}?"}],
}
SAMPLING = {"temperature": 0, "max_completion_tokens": 12, "seed": 7}


def rows(n: int = 8) -> list[dict]:
    return [
        {"item": {"country": country, "answer": f"{FORMAT} {capital.upper()}"}}
        for country, capital in CAPITALS[:n]
    ]


@pytest.fixture(scope="module")
def team_a(gateway) -> openai.OpenAI:
    return client_for(gateway, "team-a")


@pytest.fixture(scope="module")
def fine_tuned(team_a) -> str:
    """A model that learnt the format: a short job at a high learning rate."""
    training = upload(team_a, chat_examples(32, seed=11), "format.jsonl")
    job = team_a.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        suffix="format",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 5}},
        },
        extra_body={
            "tuneplex": {"max_steps": 16, "save_steps": 16, "lora_r": 8, "max_seq_length": 64}
        },
    )
    return wait_status(team_a, job.id, {"succeeded"}).fine_tuned_model


@pytest.fixture(scope="module")
def capitals_eval(team_a):
    created = team_a.evals.create(
        name="capitals",
        data_source_config={
            "type": "custom",
            "item_schema": ITEM_SCHEMA,
            "include_sample_schema": True,
        },
        testing_criteria=CRITERIA,
        metadata={"team": "a"},
    )
    yield created
    team_a.evals.delete(created.id)


def wait_run(client: openai.OpenAI, eval_id: str, run_id: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        time.sleep(1)
    raise AssertionError(f"{run_id} not done after {timeout}s")


def criterion(run, name: str):
    [found] = [c for c in run.per_testing_criteria_results if c.testing_criteria == name]
    return found


def test_an_eval_runs_against_the_base_and_the_fine_tuned_model(team_a, capitals_eval, fine_tuned):
    assert capitals_eval.id.startswith("eval_") and capitals_eval.object == "eval"
    schema = capitals_eval.data_source_config.schema_
    assert schema["properties"]["item"] == ITEM_SCHEMA and "sample" in schema["required"]
    assert [c.name for c in capitals_eval.testing_criteria] == [c["name"] for c in CRITERIA]
    assert capitals_eval.id in [e.id for e in team_a.evals.list(limit=100)]

    # The base model's rows come from an uploaded file, the fine-tuned model's inline.
    data = "".join(json.dumps(r) + "\n" for r in rows()).encode()
    questions = team_a.files.create(file=("capitals.jsonl", io.BytesIO(data)), purpose="evals")
    base_run = team_a.evals.runs.create(
        capitals_eval.id,
        name="base",
        data_source={
            "type": "completions",
            "model": BASE,
            "input_messages": INPUT,
            "sampling_params": SAMPLING,
            "source": {"type": "file_id", "id": questions.id},
        },
    )
    tuned_run = team_a.evals.runs.create(
        capitals_eval.id,
        name="fine-tuned",
        metadata={"model": "fine-tuned"},
        data_source={
            "type": "completions",
            "model": fine_tuned,
            "input_messages": INPUT,
            "sampling_params": SAMPLING,
            "source": {"type": "file_content", "content": rows()},
        },
    )
    assert base_run.status in ("queued", "in_progress") and base_run.model == BASE
    assert tuned_run.data_source.source.type == "file_content"

    base = wait_run(team_a, capitals_eval.id, base_run.id)
    tuned = wait_run(team_a, capitals_eval.id, tuned_run.id)
    assert (base.status, tuned.status) == ("completed", "completed"), (base.error, tuned.error)
    for run in (base, tuned):
        counts = run.result_counts
        assert counts.total == 8 and counts.errored == 0
        assert counts.passed + counts.failed == 8
        for c in run.per_testing_criteria_results:
            assert c.passed + c.failed == 8
    # The base never writes the format; the fine-tuned model learnt it.
    assert criterion(base, "Answers in the format").passed == 0
    formatted = criterion(tuned, "Answers in the format").passed
    assert formatted >= 4, tuned.per_testing_criteria_results
    assert (
        criterion(tuned, "Close to the answer").passed
        > criterion(base, "Close to the answer").passed
    )
    assert tuned.result_counts.passed > base.result_counts.passed

    # Output items: the real answers, graded as the counts say.
    items = list(team_a.evals.runs.output_items.list(tuned.id, eval_id=capitals_eval.id, limit=3))
    assert len(items) == 8  # pages of 3 through `after`
    assert [i.datasource_item_id for i in items] == list(range(8))
    for item, row in zip(items, rows(), strict=True):
        assert item.datasource_item == row["item"]
        assert item.sample.input[0].content == f"What is the capital of {row['item']['country']}?"
        answer = item.sample.output[0].content
        # The sampling the job used: what the run asked, and the defaults for the rest.
        assert (item.sample.max_completion_tokens, item.sample.seed) == (12, 7)
        assert (item.sample.temperature, item.sample.top_p) == (0, 1.0)
        [fmt, close] = item.results
        assert fmt.name == "Answers in the format"
        assert fmt.passed == (FORMAT in answer), answer
        # The grader's own metric, applied to the answer the run recorded.
        assert close.score == pytest.approx(
            similarity("fuzzy_match", answer, row["item"]["answer"])
        )
        assert close.passed == (close.score >= SIMILAR)
        assert item.status == ("pass" if fmt.passed and close.passed else "fail")
    assert formatted == sum(1 for i in items if i.results[0].passed)
    passing = list(
        team_a.evals.runs.output_items.list(tuned.id, eval_id=capitals_eval.id, status="pass")
    )
    assert len(passing) == tuned.result_counts.passed
    one = team_a.evals.runs.output_items.retrieve(
        items[2].id, eval_id=capitals_eval.id, run_id=tuned.id
    )
    assert one.datasource_item == items[2].datasource_item

    listed = team_a.evals.runs.list(capitals_eval.id)
    assert [r.id for r in listed] == [base.id, tuned.id]  # oldest first, OpenAI's default
    assert [r.id for r in team_a.evals.runs.list(capitals_eval.id, status="completed")] == [
        base.id,
        tuned.id,
    ]
    assert listed.data[1].metadata == {"model": "fine-tuned"}


def test_another_owner_sees_no_eval_and_no_run(team_a, capitals_eval, gateway):
    team_b = client_for(gateway, "team-b")
    with pytest.raises(openai.NotFoundError):
        team_b.evals.retrieve(capitals_eval.id)
    with pytest.raises(openai.NotFoundError):
        team_b.evals.runs.list(capitals_eval.id)
    assert capitals_eval.id not in [e.id for e in team_b.evals.list()]
    renamed = team_a.evals.update(capitals_eval.id, name="capitals v2")
    assert renamed.name == "capitals v2" and renamed.created_at == capitals_eval.created_at
    assert team_a.evals.retrieve(capitals_eval.id).name == "capitals v2"


def test_a_run_can_be_cancelled(team_a, capitals_eval):
    run = team_a.evals.runs.create(
        capitals_eval.id,
        data_source={
            "type": "completions",
            "model": BASE,
            "input_messages": INPUT,
            "source": {"type": "file_content", "content": rows(12)},
        },
    )
    team_a.evals.runs.cancel(run.id, eval_id=capitals_eval.id)
    done = wait_run(team_a, capitals_eval.id, run.id, timeout=120)
    assert done.status == "canceled"


def completions(**overrides) -> dict:
    return {
        "type": "completions",
        "model": BASE,
        "input_messages": INPUT,
        "source": {"type": "file_content", "content": rows(2)},
        **overrides,
    }


@pytest.mark.parametrize(
    ("data_source", "param", "words"),
    [
        (completions(model="no-such-model"), "data_source.model", "does not exist"),
        (
            completions(
                source={
                    "type": "file_content",
                    "content": [rows(1)[0], {"item": {"country": "Peru"}}],
                }
            ),
            "data_source.source",
            "content[1]: the item does not match the eval's item_schema",
        ),
        (
            completions(source={"type": "file_id", "id": "file-000000000000000000000000"}),
            "data_source.source.id",
            "No such File",
        ),
        (completions(type="jsonl"), "data_source.type", "not run here"),
    ],
)
def test_bad_runs_are_400_naming_the_field(team_a, capitals_eval, data_source, param, words):
    with pytest.raises(openai.BadRequestError) as refused:
        team_a.evals.runs.create(capitals_eval.id, data_source=data_source)
    assert refused.value.body["param"] == param, refused.value.body
    assert words in refused.value.message


def test_bad_evals_are_refused_with_openai_errors(team_a):
    with pytest.raises(openai.BadRequestError) as label_model:
        team_a.evals.create(
            data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
            testing_criteria=[
                CRITERIA[0],
                {
                    "type": "label_model",
                    "name": "x",
                    "model": BASE,
                    "input": [],
                    "labels": ["a"],
                    "passing_labels": ["a"],
                },
            ],
        )
    assert label_model.value.body["param"] == "testing_criteria[1].type"
    with pytest.raises(openai.BadRequestError) as logs:
        team_a.evals.create(data_source_config={"type": "logs"}, testing_criteria=CRITERIA)
    assert logs.value.body["param"] == "data_source_config.type"
    with pytest.raises(openai.NotFoundError):
        team_a.evals.retrieve("eval_000000000000000000000000")
    with pytest.raises(openai.NotFoundError):
        team_a.evals.runs.create("eval_000000000000000000000000", data_source=completions())
    bad_row = io.BytesIO(b'{"item": {"country": "Peru"}}\n{"item": "Peru"}\n')
    with pytest.raises(openai.BadRequestError) as bad_file:
        team_a.files.create(file=("rows.jsonl", bad_row), purpose="evals")
    assert "rows.jsonl line 2" in bad_file.value.message and "item_type" in bad_file.value.message
