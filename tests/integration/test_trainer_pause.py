"""Pause, resume and labels of trainer jobs through the gRPC API, with the real trainer and
registry processes and a real LoRA job on SmolLM2-135M on CPU.

One job carries the pause, the resume and the token count (each training run costs CPU
minutes on the shared 2-core machines): paused mid-run it stops at the end of its step with a
complete checkpoint there, waits in PAUSED, and resumed it trains every later step exactly
once, its token count going on from the checkpoint's.
"""

from __future__ import annotations

import time

import pytest

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.stubs import trainer_pb2
from services.trainer.recipes.chat_data import tokenize_chat_file
from tests.helpers.sample_data import chat_examples, write_jsonl
from tests.helpers.trainer_process import start_trainer, wait_for_final

pytestmark = pytest.mark.integration

EXAMPLES = 64
BATCH = 4
STEPS_PER_EPOCH = EXAMPLES // BATCH
STEPS = 2 * STEPS_PER_EPOCH + 4
SAVE_EVERY = 5
PAUSE_AFTER_STEP = 7  # mid-run, between two scheduled checkpoints
MAX_SEQ_LENGTH = 128


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory):
    data = tmp_path_factory.mktemp("pause-data")
    return write_jsonl(chat_examples(EXAMPLES), data / "caps.jsonl")


@pytest.fixture(scope="module")
def trainer(registry_with_base_model, dataset_file, tmp_path_factory):
    with RegistryClient(registry_with_base_model.target) as client:
        client.push("dataset", "pause-caps", dataset_file)
    server = start_trainer(
        tmp_path_factory.mktemp("pause-trainer-home"), registry_with_base_model.target
    )
    try:
        yield server
    finally:
        server.stop()


def spec(output_name: str, **hp) -> trainer_pb2.TrainingSpec:
    hyperparameters = dict(
        max_steps=STEPS,
        batch_size=BATCH,
        max_seq_length=MAX_SEQ_LENGTH,
        learning_rate=5e-4,
        save_steps=SAVE_EVERY,
    )
    return trainer_pb2.TrainingSpec(
        base_model="smollm2-135m-instruct",
        dataset="pause-caps",
        output_name=output_name,
        lora=trainer_pb2.LoraConfig(r=8),
        hyperparameters=trainer_pb2.Hyperparameters(**(hyperparameters | hp)),
    )


def wait_for_state(client: TrainerClient, job_id: str, state: int, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.state == state:
            return job
        time.sleep(0.25)
    raise AssertionError(f"{job_id} not {trainer_pb2.JobState.Name(state)}: {job}")


def epoch_tokens(dataset_file, base_model_dir) -> int:
    """The input tokens of one pass over the dataset, as the trainer tokenizes it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    rows = tokenize_chat_file(dataset_file, tokenizer, MAX_SEQ_LENGTH, False)
    return sum(len(r["input_ids"]) for r in rows)


def test_a_paused_job_stops_at_a_checkpoint_and_resumes_every_later_step_once(
    trainer, dataset_file, base_model_dir
):
    client = TrainerClient(trainer.target)
    owner = {"tuneplex.owner": "team-a"}
    job = client.create_job(spec("pause-lora"), labels=owner)
    assert dict(job.labels) == owner

    # A second job waits behind the first (one runs at a time): its pause is immediate.
    queued = client.create_job(spec("pause-queued"), labels={"tuneplex.owner": "team-b"})
    assert client.pause_job(queued.id).state == trainer_pb2.JOB_STATE_PAUSED
    assert [j.id for j in client.list_jobs(labels=owner)] == [job.id]
    assert [j.id for j in client.list_jobs(labels={"tuneplex.owner": "team-b"})] == [queued.id]
    with pytest.raises(InvalidArgument):
        client.list_jobs(labels={"Owner": "x"})

    for event in client.stream_events(job.id):
        if event.WhichOneof("kind") == "progress" and event.progress.step >= PAUSE_AFTER_STEP:
            break
    with pytest.raises(FailedPrecondition) as refused:
        client.resume_job(job.id)
    assert "not paused" in refused.value.message
    asked = client.pause_job(job.id)
    assert asked.state in (trainer_pb2.JOB_STATE_RUNNING, trainer_pb2.JOB_STATE_PAUSED)
    paused = wait_for_state(client, job.id, trainer_pb2.JOB_STATE_PAUSED, timeout=120)
    assert paused.attempt == 1

    # Another trainer start leaves it paused.
    trainer.stop()
    trainer.start()
    client.close()
    client = TrainerClient(trainer.target)
    assert client.get_job(job.id).state == trainer_pb2.JOB_STATE_PAUSED

    checkpoints = client.list_checkpoints(job.id)
    paused_at = checkpoints[-1].step
    assert paused_at >= PAUSE_AFTER_STEP
    assert client.resume_job(job.id).state == trainer_pb2.JOB_STATE_QUEUED
    job = wait_for_final(client, job.id, timeout=900)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job
    assert job.attempt == 2

    events = list(client.stream_events(job.id))
    states = [
        (e.sequence, e.state_changed.state, e.state_changed.message)
        for e in events
        if e.WhichOneof("kind") == "state_changed"
    ]
    (pause_event,) = [s for s in states if s[1] == trainer_pb2.JOB_STATE_PAUSED]
    assert pause_event[2] == f"paused at step {paused_at}"
    progress = [(e.sequence, e.progress) for e in events if e.WhichOneof("kind") == "progress"]
    before = [p.step for seq, p in progress if seq < pause_event[0]]
    after = [p.step for seq, p in progress if seq > pause_event[0]]
    # The first attempt stopped at the step it saved (nothing trained past the checkpoint),
    # and the second trained each later step once.
    assert before == list(range(1, paused_at + 1))
    assert after == list(range(paused_at + 1, STEPS + 1))
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert f"stopped at step {paused_at} with a checkpoint" in logs

    # The checkpoint the pause saved lists what was logged at its step.
    at_pause = next(c for c in checkpoints if c.step == paused_at)
    logged = next(p for _, p in progress if p.step == paused_at)
    assert at_pause.metrics["loss"] == pytest.approx(logged.loss)
    assert at_pause.metrics["trained_tokens"] == logged.trained_tokens

    # Tokens go on after the resume, and count every input token (EOS, which this tokenizer
    # also pads with, included): each full epoch is the dataset's tokens.
    tokens = {p.step: p.trained_tokens for _, p in progress}
    ordered = [tokens[s] for s in range(1, STEPS + 1)]
    assert all(b > a > 0 for a, b in zip(ordered, ordered[1:], strict=False)), ordered
    one_epoch = epoch_tokens(dataset_file, base_model_dir)
    assert tokens[STEPS_PER_EPOCH] == one_epoch
    assert tokens[2 * STEPS_PER_EPOCH] == 2 * one_epoch
    assert job.metrics["trained_tokens"] == tokens[STEPS]
    assert job.progress.trained_tokens == tokens[STEPS]

    for call in (client.resume_job, client.pause_job):
        with pytest.raises(FailedPrecondition):
            call(job.id)
    # The paused job that waited in the queue is still paused, and cancels from there.
    assert client.get_job(queued.id).state == trainer_pb2.JOB_STATE_PAUSED
    assert client.cancel_job(queued.id).state == trainer_pb2.JOB_STATE_CANCELLED
    client.close()


def test_cli_creates_with_labels_filters_pauses_and_resumes(trainer, monkeypatch):
    from typer.testing import CliRunner

    from services.client.cli.app import app

    monkeypatch.setenv("TUNEPLEX_TRAINER_TARGET", trainer.target)
    runner = CliRunner()
    created = runner.invoke(
        app,
        ["jobs", "create", "--dataset", "pause-caps", "-o", "pause-cli", "--max-steps", "500"]
        + ["--label", "tuneplex.owner=team-cli", "--label", "purpose=cli"],
    )
    assert created.exit_code == 0, created.output
    job_id = created.output.split()[0]
    listed = runner.invoke(app, ["jobs", "list", "--label", "tuneplex.owner=team-cli"])
    assert listed.exit_code == 0 and job_id in listed.output
    other = runner.invoke(app, ["jobs", "list", "--label", "tuneplex.owner=team-a"])
    assert other.exit_code == 0 and job_id not in other.output
    bad = runner.invoke(app, ["jobs", "list", "--label", "no-equals-sign"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
    # Paused while it loads (before any step): PAUSED with nothing to resume from but the start.
    paused = runner.invoke(app, ["jobs", "pause", job_id])
    assert paused.exit_code == 0 and f"{job_id}: paused" in paused.output, paused.output
    resumed = runner.invoke(app, ["jobs", "resume", job_id])
    assert resumed.exit_code == 0 and f"{job_id}: queued" in resumed.output
    again = runner.invoke(app, ["jobs", "resume", job_id])
    assert again.exit_code != 0 and "not paused" in again.output
    with TrainerClient(trainer.target) as client:
        assert dict(client.get_job(job_id).labels) == {
            "tuneplex.owner": "team-cli",
            "purpose": "cli",
        }
        client.cancel_job(job_id)
        assert wait_for_final(client, job_id, timeout=30).state == trainer_pb2.JOB_STATE_CANCELLED
