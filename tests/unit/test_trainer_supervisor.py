"""The supervisor's retry rules, with a scripted runner standing in for worker processes:
crashes resume up to the attempt limit then fail with the reason; a job the worker declares
wrong is not retried; success needs a published output; what the user reads names no path."""

from __future__ import annotations

import signal

from services.common.stubs import trainer_pb2
from services.trainer.checkpoints import commit_checkpoint
from services.trainer.runners.local import LocalRunner
from services.trainer.spec import TrainingConfig
from services.trainer.store import JobStore
from services.trainer.supervisor import JobSupervisor
from services.trainer.worker.protocol import CHECKPOINTS_DIR, EXIT_DOMAIN_ERROR


class ScriptedWorker:
    def __init__(self, events: list[dict], code: int):
        self._events, self._code = events, code

    async def events(self):
        for event in self._events:
            yield event

    async def wait(self) -> int:
        return self._code

    async def stop(self, grace_seconds: float) -> None:
        pass


class ScriptedRunner(LocalRunner):
    """Scripted workers; checkpoints are read where the local runner's workers commit them."""

    def __init__(self, *attempts: tuple[list[dict], int]):
        super().__init__()
        self.attempts = list(attempts)
        self.started = 0

    async def start(self, job_id, job_dir, num_gpus, zero_stage, attempt=1):
        self.started += 1
        return ScriptedWorker(*self.attempts.pop(0))


def setup(tmp_path, runner) -> tuple[JobStore, JobSupervisor]:
    store = JobStore(tmp_path / "jobs.sqlite")
    config = TrainingConfig(base_model="m@1", dataset="d@1", output_name="o")
    store.create(
        trainer_pb2.Job(id="job-1", state=trainer_pb2.JOB_STATE_QUEUED), config.model_dump_json()
    )
    supervisor = JobSupervisor(
        store,
        runner,
        work_dir=tmp_path,
        registry_target="x:1",
        max_attempts=3,
        cancel_grace_seconds=1,
    )
    return store, supervisor


async def test_crashes_are_retried_up_to_the_limit_then_fail_with_the_reason(tmp_path):
    killed = ([{"type": "state", "state": "RUNNING"}], -signal.SIGKILL)
    runner = ScriptedRunner(killed, killed, killed)
    store, supervisor = setup(tmp_path, runner)
    await supervisor.run("job-1")
    job = store.get("job-1")
    assert runner.started == 3 and job.attempt == 3
    assert job.state == trainer_pb2.JOB_STATE_FAILED
    assert job.error.code == "worker_crashed" and "signal SIGKILL" in job.error.message
    logs = [e.log.message for e in store.events("job-1") if e.WhichOneof("kind") == "log"]
    assert sum("resuming from the start" in m for m in logs) == 3


async def test_the_final_crash_message_says_what_happened_and_names_no_path(tmp_path):
    killed = ([{"type": "state", "state": "RUNNING"}], -signal.SIGKILL)
    store, supervisor = setup(tmp_path, ScriptedRunner(killed, killed, killed))
    checkpoints = supervisor.job_dir("job-1") / CHECKPOINTS_DIR
    staged = checkpoints / "_staging" / "checkpoint-6"
    staged.mkdir(parents=True)
    (staged / "adapter_model.safetensors").write_bytes(b"weights")
    commit_checkpoint(staged, checkpoints)
    await supervisor.run("job-1")
    error = store.get("job-1").error
    assert error.code == "worker_crashed"
    assert error.message == (
        "the worker died 3 times (last: attempt 3, signal SIGKILL); "
        "its checkpoint at step 6 is kept"
    )
    assert "/" not in error.message and str(tmp_path) not in error.message
    logs = [e.log.message for e in store.events("job-1") if e.WhichOneof("kind") == "log"]
    assert (
        logs[-1]
        == "worker attempt 3 ended with signal SIGKILL; resuming from the checkpoint at step 6"
    )


async def test_a_crash_then_success_publishes(tmp_path):
    done = (
        [
            {"type": "progress", "step": 5, "total_steps": 5, "loss": 0.5},
            {"type": "result", "metrics": {"train_loss": 0.5}},
            {"type": "published", "output": "o@1"},
        ],
        0,
    )
    runner = ScriptedRunner(([], 1), done)
    store, supervisor = setup(tmp_path, runner)
    await supervisor.run("job-1")
    job = store.get("job-1")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED and job.attempt == 2
    assert job.output == "o@1" and job.metrics["train_loss"] == 0.5
    assert job.progress.step == 5


async def test_a_wrong_job_is_not_retried(tmp_path):
    wrong = (
        [
            {
                "type": "failed",
                "code": "dataset_invalid",
                "message": "no assistant turns",
                "param": "training.dataset",
            }
        ],
        EXIT_DOMAIN_ERROR,
    )
    runner = ScriptedRunner(wrong)
    store, supervisor = setup(tmp_path, runner)
    await supervisor.run("job-1")
    job = store.get("job-1")
    assert runner.started == 1 and job.state == trainer_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.error.param) == ("dataset_invalid", "training.dataset")


async def test_exit_zero_without_a_published_output_is_not_success(tmp_path):
    runner = ScriptedRunner(([], 0), ([], 0), ([], 0))
    store, supervisor = setup(tmp_path, runner)
    await supervisor.run("job-1")
    assert store.get("job-1").state == trainer_pb2.JOB_STATE_FAILED


async def test_cancel_of_a_queued_job_is_immediate(tmp_path):
    runner = ScriptedRunner()
    store, supervisor = setup(tmp_path, runner)
    job = await supervisor.cancel("job-1")
    assert job.state == trainer_pb2.JOB_STATE_CANCELLED
    await supervisor.run("job-1")  # dequeued later: nothing starts
    assert runner.started == 0
