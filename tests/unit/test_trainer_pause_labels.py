"""Pause/resume and labels through the real servicer, store and supervisor, with a scripted
runner standing in for worker processes (the real worker's side is
tests/integration/test_trainer_pause.py): a queued job pauses at once and is not started by
its old queue entry; a running one pauses once its worker has committed a checkpoint; resume
queues it without spending its crash budget; a finished job cannot be paused nor a running
one resumed; labels are checked, kept, compared under an idempotency key and filtered on
across pages; a checkpoint lists the metrics logged at its step and its published version."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.common.stubs import trainer_pb2
from services.trainer.admission import Admission
from services.trainer.checkpoints import commit_checkpoint, complete_checkpoints
from services.trainer.device import DeviceInfo
from services.trainer.queue import JobQueue
from services.trainer.service import TrainerServicer
from services.trainer.store import JobStore
from services.trainer.supervisor import JobSupervisor
from services.trainer.worker.protocol import EXIT_PAUSED, read_worker_config
from tests.helpers.admission_registry import RegistryAtVersionOne

GIB = 1024**3
CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * GIB, name="cpu")


class StoppableWorker:
    """Emits its events, then runs until stopped; exits ``EXIT_PAUSED`` as the real worker
    does after committing the checkpoint a stop asks for."""

    def __init__(self, events: list[dict], code: int = EXIT_PAUSED, *, until_stopped=True):
        self._events = events
        self._stopped = asyncio.Event()
        self._code = code
        self._until_stopped = until_stopped
        self.stop_graces: list[float] = []

    async def events(self):
        for event in self._events:
            yield event
        if self._until_stopped:
            await self._stopped.wait()

    async def wait(self) -> int:
        return self._code

    async def stop(self, grace_seconds: float) -> None:
        self.stop_graces.append(grace_seconds)
        self._stopped.set()


class ScriptedRunner:
    def __init__(self, *workers):
        self.workers = list(workers)
        self.started = 0

    async def start(self, job_id, job_dir, num_gpus, zero_stage, attempt=1):
        self.started += 1
        return self.workers.pop(0)

    def checkpoints(self, job_id, job_dir):
        return complete_checkpoints(job_dir / "checkpoints")


class Stack:
    def __init__(self, tmp_path, runner):
        self.store = JobStore(tmp_path / "jobs.sqlite")
        self.supervisor = JobSupervisor(
            self.store,
            runner,
            work_dir=tmp_path,
            registry_target="registry:1",
            max_attempts=2,
            cancel_grace_seconds=1,
        )
        admission = Admission(RegistryAtVersionOne(), CPU, "local", host_memory_bytes=24 * GIB)
        self.queue = JobQueue(self.supervisor.run, 1)
        self.servicer = TrainerServicer(self.store, admission, self.queue, self.supervisor)

    async def create(self, labels=None, key="", output_name="sql-lora") -> trainer_pb2.Job:
        spec = trainer_pb2.TrainingSpec(
            base_model="smollm2-135m-instruct",
            dataset="shop-sql",
            output_name=output_name,
            hyperparameters=trainer_pb2.Hyperparameters(
                max_steps=30, batch_size=4, max_seq_length=128
            ),
        )
        request = trainer_pb2.CreateJobRequest(
            spec=trainer_pb2.JobSpec(training=spec), idempotency_key=key, labels=labels or {}
        )
        return (await self.servicer.CreateJob(request, None)).job

    async def pause(self, job_id):
        return (await self.servicer.PauseJob(trainer_pb2.PauseJobRequest(id=job_id), None)).job

    async def resume(self, job_id):
        request = trainer_pb2.ResumeJobRequest(id=job_id)
        return (await self.servicer.ResumeJob(request, None)).job

    async def listed(self, labels, page_size=2) -> list[str]:
        ids, token = [], ""
        while True:
            request = trainer_pb2.ListJobsRequest(
                page_size=page_size, page_token=token, labels=labels
            )
            page = await self.servicer.ListJobs(request, None)
            ids += [j.id for j in page.jobs]
            token = page.next_page_token
            if not token:
                return ids

    def states(self, job_id) -> list[str]:
        return [
            trainer_pb2.JobState.Name(e.state_changed.state)
            for e in self.store.events(job_id)
            if e.WhichOneof("kind") == "state_changed"
        ]


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path, ScriptedRunner())
    yield s
    s.store.close()


async def test_a_queued_job_pauses_at_once_and_its_old_queue_entry_starts_nothing(stack):
    job = await stack.create()
    paused = await stack.pause(job.id)
    assert paused.state == trainer_pb2.JOB_STATE_PAUSED
    await stack.supervisor.run(job.id)  # dequeued later
    assert stack.supervisor.runner.started == 0
    assert (await stack.pause(job.id)).state == trainer_pb2.JOB_STATE_PAUSED  # idempotent


async def test_resume_of_a_job_not_paused_and_pause_of_a_finished_one_are_refused(stack):
    job = await stack.create()
    with pytest.raises(FailedPrecondition) as refused:
        await stack.resume(job.id)
    assert "is queued, not paused" in refused.value.message
    await stack.supervisor.cancel(job.id)
    with pytest.raises(FailedPrecondition) as refused:
        await stack.pause(job.id)
    assert "has already cancelled" in refused.value.message
    with pytest.raises(FailedPrecondition):
        await stack.resume(job.id)


async def test_cancel_of_a_paused_job_cancels_it(stack):
    job = await stack.create()
    await stack.pause(job.id)
    cancelled = (await stack.servicer.CancelJob(trainer_pb2.CancelJobRequest(id=job.id), None)).job
    assert cancelled.state == trainer_pb2.JOB_STATE_CANCELLED


async def test_a_running_job_pauses_at_its_checkpoint_and_resumes_without_spending_attempts(
    tmp_path,
):
    progress = {"type": "progress", "step": 4, "total_steps": 30, "loss": 1.5}
    checkpoint = {"type": "checkpoint", "step": 4, "size_bytes": 10}
    first = StoppableWorker([{"type": "state", "state": "RUNNING"}, progress, checkpoint])
    second = StoppableWorker([{"type": "state", "state": "RUNNING"}])
    third = StoppableWorker([{"type": "published", "output": "sql-lora@1"}], 0, until_stopped=False)
    stack = Stack(tmp_path, ScriptedRunner(first, second, third))
    job = await stack.create(labels={"tuneplex.owner": "team-a"})
    run = asyncio.create_task(stack.supervisor.run(job.id))
    while stack.supervisor.last_checkpoint_step(job.id) != 4:
        await asyncio.sleep(0.01)
    checkpoints = tmp_path / "jobs" / job.id / "checkpoints"
    staged = checkpoints / "_staging" / "checkpoint-4"
    staged.mkdir(parents=True)  # what the worker's checkpoint event announced
    commit_checkpoint(staged, checkpoints)
    asked = await stack.pause(job.id)
    assert asked.state == trainer_pb2.JOB_STATE_RUNNING  # until the worker has saved
    await run
    job = stack.store.get(job.id)
    assert job.state == trainer_pb2.JOB_STATE_PAUSED and job.attempt == 1
    assert first.stop_graces and first.stop_graces[0] > 60  # time to save, unlike a cancel
    assert stack.store.events(job.id)[-1].state_changed.message == "paused at step 4"
    # The worker is handed the job's labels (it puts them on what it publishes).
    assert read_worker_config(tmp_path / "jobs" / job.id).labels == {"tuneplex.owner": "team-a"}

    # Paused twice with max_attempts=2, the third attempt still runs: pauses are no crashes.
    resumed = await stack.resume(job.id)
    assert resumed.state == trainer_pb2.JOB_STATE_QUEUED
    run = asyncio.create_task(stack.supervisor.run(job.id))
    while stack.store.get(job.id).state != trainer_pb2.JOB_STATE_RUNNING:
        await asyncio.sleep(0.01)
    await stack.pause(job.id)
    await run
    assert second.stop_graces and stack.store.get(job.id).state == trainer_pb2.JOB_STATE_PAUSED
    await stack.resume(job.id)
    await stack.supervisor.run(job.id)
    await stack.supervisor.run(job.id)  # the first queue entry, late: runs nothing more
    job = stack.store.get(job.id)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED and job.attempt == 3
    assert stack.supervisor.runner.started == 3
    assert stack.states(job.id).count("JOB_STATE_PAUSED") == 2


async def test_labels_are_checked_kept_and_filtered_across_pages(stack):
    with pytest.raises(InvalidArgument) as refused:
        await stack.create(labels={"Owner": "x"})
    assert "'Owner'" in refused.value.message and refused.value.param == "labels"
    mine = [(await stack.create(labels={"tuneplex.owner": "a", "n": str(i)})).id for i in range(3)]
    theirs = (await stack.create(labels={"tuneplex.owner": "b"})).id
    plain = (await stack.create()).id
    assert stack.store.get(mine[0]).labels == {"tuneplex.owner": "a", "n": "0"}
    assert sorted(await stack.listed({"tuneplex.owner": "a"})) == sorted(mine)
    assert await stack.listed({"tuneplex.owner": "a", "n": "1"}) == [mine[1]]
    assert await stack.listed({"tuneplex.owner": "b"}) == [theirs]
    assert len(await stack.listed({})) == 5 and plain in await stack.listed({})
    with pytest.raises(InvalidArgument):
        await stack.listed({"bad key": "x"})


async def test_labels_are_part_of_the_request_an_idempotency_key_names(stack):
    first = await stack.create(labels={"tuneplex.owner": "a"}, key="k1")
    again = await stack.create(labels={"tuneplex.owner": "a"}, key="k1")
    assert again.id == first.id
    with pytest.raises(AlreadyExists) as refused:
        await stack.create(labels={"tuneplex.owner": "b"}, key="k1")
    assert "labels" in refused.value.message


async def test_checkpoints_list_the_metrics_of_their_step_and_their_published_version(
    tmp_path,
):
    events = [
        {"type": "progress", "step": 2, "total_steps": 4, "loss": 2.0, "trained_tokens": 50},
        {"type": "eval", "step": 2, "metrics": {"eval_loss": 2.5}},
        {"type": "checkpoint", "step": 2},
        # A killed attempt logged step 3, the resumed one logs it again: the checkpoint of
        # step 4 has what the resumed attempt logged.
        {"type": "progress", "step": 4, "total_steps": 4, "loss": 1.0, "trained_tokens": 100},
        {"type": "checkpoint", "step": 4},
        {"type": "checkpoint_published", "step": 4, "version": "sql-lora-step-4@1"},
        {"type": "published", "output": "sql-lora@1"},
    ]
    stack = Stack(tmp_path, ScriptedRunner(StoppableWorker(events, 0, until_stopped=False)))
    job = await stack.create()
    checkpoints = tmp_path / "jobs" / job.id / "checkpoints"
    for step in (2, 4):
        staged = checkpoints / "_staging" / f"checkpoint-{step}"
        staged.mkdir(parents=True)
        (staged / "adapter_model.safetensors").write_bytes(b"x" * step)
        commit_checkpoint(staged, checkpoints)
    await stack.supervisor.run(job.id)
    request = trainer_pb2.ListCheckpointsRequest(id=job.id)
    listed = (await stack.servicer.ListCheckpoints(request, None)).checkpoints
    by_step = {c.step: c for c in listed}
    assert by_step[2].metrics["loss"] == 2.0 and by_step[2].metrics["eval_loss"] == 2.5
    assert by_step[2].metrics["trained_tokens"] == 50 and not by_step[2].published
    assert by_step[4].metrics["loss"] == 1.0 and "eval_loss" not in by_step[4].metrics
    assert by_step[4].published == "sql-lora-step-4@1"


def test_a_store_written_before_labels_and_pause_opens_and_filters(tmp_path):
    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE jobs (id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE,
            state INTEGER NOT NULL, create_us INTEGER NOT NULL,
            cancel_requested INTEGER NOT NULL DEFAULT 0, config TEXT NOT NULL,
            job BLOB NOT NULL);
        CREATE TABLE events (job_id TEXT NOT NULL, sequence INTEGER NOT NULL,
            event BLOB NOT NULL, PRIMARY KEY (job_id, sequence));
        """
    )
    old_job = trainer_pb2.Job(id="job-old", state=trainer_pb2.JOB_STATE_SUCCEEDED)
    old.execute(
        "INSERT INTO jobs (id, state, create_us, config, job) VALUES (?, ?, 1, '{}', ?)",
        ("job-old", old_job.state, old_job.SerializeToString()),
    )
    old.commit()
    old.close()
    store = JobStore(path)
    assert [j.id for j in store.list(0, 10, "")[0]] == ["job-old"]
    assert store.list(0, 10, "", {"tuneplex.owner": "a"})[0] == []
    assert not store.pause_requested("job-old") and store.attempts_before_resume("job-old") == 0
    store.close()


def test_a_checkpoint_keeps_every_metric_logged_at_its_step():
    """DPO logs its training rewards as an eval event, and a validation pass can log another at
    the same step: the checkpoint lists both, not only the last."""
    from services.trainer.service import checkpoint_metrics

    def event(**kind) -> trainer_pb2.JobEvent:
        return trainer_pb2.JobEvent(**kind)

    events = [
        event(progress=trainer_pb2.Progress(step=4, loss=0.5)),
        event(eval=trainer_pb2.EvalMetrics(step=4, metrics={"reward_margin": 1.5})),
        event(eval=trainer_pb2.EvalMetrics(step=4, metrics={"eval_loss": 0.7})),
        event(checkpoint_saved=trainer_pb2.Checkpoint(step=4)),
    ]
    found = checkpoint_metrics(events)[4]
    assert found["reward_margin"] == 1.5
    assert found["eval_loss"] == pytest.approx(0.7)
    assert found["loss"] == 0.5


async def test_a_stop_nobody_asked_for_resumes_without_spending_the_crash_budget(tmp_path):
    """A Kubernetes eviction or a node drain sends SIGTERM: the worker commits a checkpoint and
    exits EXIT_PAUSED. That is no crash: with max_attempts=2, two of them still leave the job
    its attempts, and it succeeds."""
    running = {"type": "state", "state": "RUNNING"}
    evicted = [StoppableWorker([running], EXIT_PAUSED, until_stopped=False) for _ in range(2)]
    done = StoppableWorker([{"type": "published", "output": "sql-lora@1"}], 0, until_stopped=False)
    stack = Stack(tmp_path, ScriptedRunner(*evicted, done))
    job = await stack.create()
    await stack.supervisor.run(job.id)
    job = stack.store.get(job.id)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED and job.attempt == 3
