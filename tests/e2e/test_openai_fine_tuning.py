"""The OpenAI files and fine-tuning API with the unmodified `openai` SDK, against the session's
gateway, trainer and registry, on the CPU. Training costs CPU minutes, so one supervised job
carries the main story (upload, `"auto"` hyper-parameters, pause, resume, events, checkpoints,
chat with the fine-tuned model and a checkpoint), one DPO job shows the preference path, and
every other case is refused or cancelled before it trains.
"""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from services.client.trainer import TrainerClient
from tests.e2e.conftest import BASE, TEAM_KEYS
from tests.helpers.sample_data import chat_examples

pytestmark = pytest.mark.e2e

STEPS = 12
SAVE_EVERY = 3
# Small and quick: the session's trainer runs one job at a time on two shared cores.
SHORT = {"max_steps": STEPS, "save_steps": SAVE_EVERY, "lora_r": 8, "max_seq_length": 128}


def client_for(gateway, owner: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=TEAM_KEYS[owner], max_retries=0, timeout=120
    )


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: openai.OpenAI, rows: list[dict], name: str = "train.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(rows))), purpose="fine-tune")


def wait_status(client: openai.OpenAI, job_id: str, wanted: set[str], timeout: float = 900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in wanted:
            return job
        assert job.status not in {"failed", "cancelled"} - wanted, job
        time.sleep(1)
    raise AssertionError(f"{job_id} not in {wanted} after {timeout}s: {job}")


def preference_pairs(n: int = 10) -> list[dict]:
    tables = ["orders", "customers", "products", "invoices", "items"]
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"List the ids in {t}."}]},
            "preferred_output": [{"role": "assistant", "content": f"SELECT id FROM {t};"}],
            "non_preferred_output": [{"role": "assistant", "content": f"The {t} have ids."}],
        }
        for t in (tables * 2)[:n]
    ]


@pytest.fixture(scope="module")
def team_a(gateway) -> openai.OpenAI:
    return client_for(gateway, "team-a")


@pytest.fixture(scope="module")
def chats_file(team_a):
    return upload(team_a, chat_examples(24, seed=3), "capitals.jsonl")


def test_upload_list_retrieve_and_read_back_a_file(team_a, gateway):
    rows = chat_examples(12, seed=5)
    created = upload(team_a, rows, "mine.jsonl")
    assert created.id.startswith("file-") and created.status == "processed"
    assert created.filename == "mine.jsonl" and created.purpose == "fine-tune"
    assert created.bytes == len(jsonl(rows)) and created.created_at > 0
    assert team_a.files.retrieve(created.id).id == created.id
    assert created.id in [f.id for f in team_a.files.list(purpose="fine-tune")]
    assert team_a.files.content(created.id).content == jsonl(rows)
    # Another owner sees nothing of it.
    team_b = client_for(gateway, "team-b")
    assert created.id not in [f.id for f in team_b.files.list()]
    with pytest.raises(openai.NotFoundError):
        team_b.files.retrieve(created.id)
    assert team_a.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        team_a.files.retrieve(created.id)


def test_a_supervised_job_with_auto_hyperparameters_pauses_resumes_and_serves(
    team_a, chats_file, trainer
):
    job = team_a.fine_tuning.jobs.create(
        model=BASE,
        training_file=chats_file.id,
        suffix="capitals",
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": "auto",
                    "batch_size": "auto",
                    "learning_rate_multiplier": "auto",
                }
            },
        },
        metadata={"story": "e2e"},
        extra_body={"tuneplex": SHORT},
    )
    assert job.id.startswith("ftjob-") and job.status in {"queued", "validating_files", "running"}
    # The "auto" rule for 24 examples, reported as numbers.
    assert job.hyperparameters.batch_size == 2
    assert job.hyperparameters.n_epochs == 10
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    assert job.metadata == {"story": "e2e"} and job.fine_tuned_model is None

    # Pause while it runs: it stops at a committed checkpoint, which the trainer lists.
    wait_status(team_a, job.id, {"running"})
    paused = team_a.fine_tuning.jobs.pause(job.id)
    assert paused.id == job.id
    paused = wait_status(team_a, job.id, {"paused"}, timeout=300)
    trainer_id = "job-" + job.id.removeprefix("ftjob-")
    with TrainerClient(trainer.target) as grpc_trainer:
        assert grpc_trainer.list_checkpoints(trainer_id), "paused without a checkpoint"

    team_a.fine_tuning.jobs.resume(job.id)
    done = wait_status(team_a, job.id, {"succeeded"})
    assert (
        done.fine_tuned_model
        == f"ft:{BASE}:team-a:capitals:" + done.fine_tuned_model.split(":")[-1]
    )
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.finished_at and done.estimated_finish is None

    events = list(team_a.fine_tuning.jobs.list_events(job.id, limit=7))  # pages via `after`
    assert events[0].message.startswith("Job succeeded")
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    steps = {e.data["step"] for e in events if e.type == "metrics" and "total_steps" in e.data}
    assert steps == set(range(1, STEPS + 1)), f"steps are not gap-free across the pause: {steps}"
    assert any(e.message.startswith("Job paused") for e in events)

    checkpoints = list(team_a.fine_tuning.jobs.checkpoints.list(job.id))
    steps_kept = [c.step_number for c in checkpoints]
    # Newest first: every save_steps, and the one the pause committed.
    assert steps_kept == sorted(steps_kept, reverse=True) and steps_kept[0] == STEPS
    assert set(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY)) <= set(steps_kept)
    assert checkpoints[0].metrics.train_loss is not None
    [first] = [c for c in checkpoints if c.step_number == SAVE_EVERY]
    checkpoint = first.fine_tuned_model_checkpoint
    assert checkpoint == f"{done.fine_tuned_model}:ckpt-step-{SAVE_EVERY}"

    for model in (done.fine_tuned_model, checkpoint):
        answer = team_a.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is the capital of Peru?"}],
            max_tokens=8,
            temperature=0,
        )
        assert answer.model == model and answer.choices[0].message.content
    listed = {m.id: m.owned_by for m in team_a.models.list()}
    assert listed[done.fine_tuned_model] == "team-a" and checkpoint in listed
    assert team_a.fine_tuning.jobs.list(metadata={"story": "e2e"}).data[0].id == job.id


def test_another_owner_cannot_see_a_job_nor_its_model(team_a, chats_file, gateway):
    job = team_a.fine_tuning.jobs.create(
        model=BASE, training_file=chats_file.id, extra_body={"tuneplex": SHORT}
    )
    team_a.fine_tuning.jobs.cancel(job.id)
    team_b = client_for(gateway, "team-b")
    for call in (
        team_b.fine_tuning.jobs.retrieve,
        team_b.fine_tuning.jobs.cancel,
        team_b.fine_tuning.jobs.list_events,
    ):
        with pytest.raises(openai.NotFoundError):
            call(job.id)
    assert job.id not in [j.id for j in team_b.fine_tuning.jobs.list()]
    with pytest.raises(openai.BadRequestError) as refused:  # not hers: as if it did not exist
        team_b.fine_tuning.jobs.create(model=BASE, training_file=chats_file.id)
    assert refused.value.body["param"] == "training_file"
    finished = wait_status(team_a, job.id, {"cancelled"}, timeout=120)
    assert finished.status == "cancelled"
    with pytest.raises(openai.BadRequestError) as not_paused:
        team_a.fine_tuning.jobs.resume(job.id)
    assert "not paused" in not_paused.value.message
    done = [m.id for m in team_b.models.list()]
    assert not any(m.startswith("ft:") and ":team-a:" in m for m in done)


@pytest.mark.parametrize(
    ("create", "param", "words"),
    [
        ({"model": "no-such-base"}, "model", "does not exist"),
        ({"training_file": "file-000000000000000000000000"}, "training_file", "No such File"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "integer from 1"),
        ({"suffix": "Not Allowed!"}, "suffix", "pattern"),
        (
            {"extra_body": {"tuneplex": {"no_such_setting": 1}}},
            "tuneplex.no_such_setting",
            "no_such_setting",
        ),
        ({"method": {"type": "dpo"}}, "training_file", "preference"),
    ],
)
def test_bad_job_requests_are_400_naming_the_field(team_a, chats_file, create, param, words):
    args = {"model": BASE, "training_file": chats_file.id, **create}
    with pytest.raises(openai.BadRequestError) as refused:
        team_a.fine_tuning.jobs.create(**args)
    assert refused.value.body["param"] == param, refused.value.body
    assert words in refused.value.message


def test_bad_files_are_400_naming_the_line_and_the_rule(team_a):
    rows = chat_examples(12, seed=1)
    rows[6] = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    }
    with pytest.raises(openai.BadRequestError) as bad_line:
        upload(team_a, rows, "broken.jsonl")
    assert "broken.jsonl line 7" in bad_line.value.message
    assert bad_line.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as too_few:
        upload(team_a, chat_examples(4), "few.jsonl")
    assert "at least 10" in too_few.value.message
    pairs = preference_pairs()
    del pairs[2]["non_preferred_output"]
    with pytest.raises(openai.BadRequestError) as no_rejected:
        upload(team_a, pairs, "pairs.jsonl")
    assert "pairs.jsonl line 3" in no_rejected.value.message
    assert "non_preferred_output" in no_rejected.value.message


def test_a_dpo_job_trains_on_a_preference_file(team_a):
    pairs = upload(team_a, preference_pairs(), "pairs.jsonl")
    with pytest.raises(openai.BadRequestError):  # a preference file is not for supervised
        team_a.fine_tuning.jobs.create(model=BASE, training_file=pairs.id)
    job = team_a.fine_tuning.jobs.create(
        model=BASE,
        training_file=pairs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
        extra_body={
            "tuneplex": {"max_steps": 2, "save_steps": 2, "lora_r": 8, "max_seq_length": 128}
        },
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    done = wait_status(team_a, job.id, {"succeeded"})
    assert done.fine_tuned_model.startswith(f"ft:{BASE}:team-a::")
    events = list(team_a.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any("reward_margin" in (e.data or {}) for e in events), [e.message for e in events]
