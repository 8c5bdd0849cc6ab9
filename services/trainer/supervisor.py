"""Runs one job to a final state: worker attempts, event ingestion, retries, cancel.

A worker exiting 0 after publishing -> SUCCEEDED; exiting with the domain-error code -> FAILED
with the worker's structured error (retrying cannot help); any other exit (SIGKILL, OOM kill,
a crash, the service restarting) -> a new attempt that resumes from the newest complete
checkpoint, until ``max_attempts`` is spent -> FAILED ``worker_crashed`` with the last reason.

Pause is a stop that waits: the worker is stopped as for a cancel (SIGTERM; on Kubernetes the
pod is deleted) but given ``PAUSE_GRACE_SECONDS`` to finish its step and commit a checkpoint
(``EXIT_PAUSED``); whatever way it ends, short of publishing or failing, the job then waits in
PAUSED until ResumeJob queues it again, and the next attempt resumes from the newest complete
checkpoint exactly as after a crash.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from prometheus_client import Counter

from services.common.errors import FailedPrecondition, TuneplexError
from services.common.stubs import trainer_pb2
from services.trainer.eval_spec import EvalConfig
from services.trainer.export_spec import ExportConfig, job_config_from_json
from services.trainer.runners.base import Runner, WorkerHandle
from services.trainer.spec import TrainingConfig
from services.trainer.store import ACTIVE, TERMINAL, JobStore, now
from services.trainer.worker.protocol import (
    DEEPSPEED_FILE,
    DEFAULT_GATEWAY_URL,
    EXIT_DOMAIN_ERROR,
    EXIT_PAUSED,
    PAUSE_GRACE_SECONDS,
    WorkerConfig,
    write_worker_config,
)

log = logging.getLogger(__name__)

JOBS_FINISHED = Counter("trainer_jobs_total", "Jobs that reached a final state.", ["state"])
STATES = {"VALIDATING": trainer_pb2.JOB_STATE_VALIDATING, "RUNNING": trainer_pb2.JOB_STATE_RUNNING}


def describe_exit(code: int) -> str:
    if code == EXIT_PAUSED:
        return "a stop with its checkpoint committed"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def state_word(state: int) -> str:
    return trainer_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


class JobSupervisor:
    def __init__(
        self,
        store: JobStore,
        runner: Runner,
        *,
        work_dir: Path,
        registry_target: str,
        max_attempts: int,
        cancel_grace_seconds: float,
        gateway_url: str = DEFAULT_GATEWAY_URL,
    ):
        self.store = store
        self.runner = runner
        self.work_dir = work_dir
        self.registry_target = registry_target
        self.max_attempts = max_attempts
        self.cancel_grace_seconds = cancel_grace_seconds
        self.gateway_url = gateway_url
        self.changed = asyncio.Condition()  # notified on every new event
        self._workers: dict[str, WorkerHandle] = {}
        # Jobs a queue slot is running: a job resumed while its old queue entry still waits
        # is queued twice, and must run once.
        self._running: set[str] = set()
        self._stopping: set[asyncio.Task] = set()
        # Set on shutdown: workers stopped then are left for the next start to resume.
        self.closing = False

    def job_dir(self, job_id: str) -> Path:
        return self.work_dir / "jobs" / job_id

    async def record(self, job_id: str, event: trainer_pb2.JobEvent) -> None:
        self.store.append_event(job_id, event)
        async with self.changed:
            self.changed.notify_all()

    async def set_state(
        self, job: trainer_pb2.Job, state: trainer_pb2.JobState, message: str = ""
    ) -> None:
        job.state = state
        if state == trainer_pb2.JOB_STATE_RUNNING and not job.HasField("start_time"):
            job.start_time.CopyFrom(now())
        if state in TERMINAL:
            job.end_time.CopyFrom(now())
            JOBS_FINISHED.labels(
                trainer_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()
            ).inc()
        self.store.save(job)
        await self.record(
            job.id,
            trainer_pb2.JobEvent(
                state_changed=trainer_pb2.StateChanged(state=state, message=message)
            ),
        )

    async def fail(self, job: trainer_pb2.Job, code: str, message: str, param: str = "") -> None:
        job.error.CopyFrom(trainer_pb2.JobError(code=code, message=message, param=param))
        await self.set_state(job, trainer_pb2.JOB_STATE_FAILED, message)

    async def cancel(self, job_id: str) -> trainer_pb2.Job:
        job = self.store.get(job_id)
        if job.state in TERMINAL:
            return job
        self.store.request_cancel(job_id)
        worker = self._workers.get(job_id)
        if worker is not None:
            self._stop_in_background(worker, self.cancel_grace_seconds)
        elif job.state == trainer_pb2.JOB_STATE_QUEUED:
            await self.set_state(job, trainer_pb2.JOB_STATE_CANCELLED, "cancelled while queued")
        elif job.state == trainer_pb2.JOB_STATE_PAUSED:
            await self.set_state(
                job, trainer_pb2.JOB_STATE_CANCELLED, "cancelled while paused; checkpoints kept"
            )
        return self.store.get(job_id)

    async def pause(self, job_id: str) -> trainer_pb2.Job:
        """PAUSED at once for a queued job; a running one is asked to stop at a checkpoint
        (``run`` puts it in PAUSED when its worker has ended). Pausing twice is one pause."""
        job = self.store.get(job_id)
        if job.state in TERMINAL:
            raise FailedPrecondition(
                f"job {job_id} has already {state_word(job.state)}; only a queued or running "
                "job can be paused",
                param="id",
                code="job_finished",
            )
        if job.state == trainer_pb2.JOB_STATE_PAUSED or self.store.pause_requested(job_id):
            return job
        self.store.request_pause(job_id)
        worker = self._workers.get(job_id)
        if worker is not None:
            await self.record(
                job_id,
                trainer_pb2.JobEvent(
                    log=trainer_pb2.LogLine(
                        message="pause requested: stopping at the end of the current step "
                        "with a checkpoint"
                    )
                ),
            )
            self._stop_in_background(worker, PAUSE_GRACE_SECONDS)
        elif job.state == trainer_pb2.JOB_STATE_QUEUED and job_id not in self._running:
            await self.set_state(job, trainer_pb2.JOB_STATE_PAUSED, "paused while queued")
        # Else between two attempts, or its worker is starting: ``run`` sees the request.
        return self.store.get(job_id)

    async def resume(self, job_id: str) -> trainer_pb2.Job:
        """A PAUSED job back to QUEUED (the caller queues it)."""
        job = self.store.get(job_id)
        if job.state != trainer_pb2.JOB_STATE_PAUSED:
            raise FailedPrecondition(
                f"job {job_id} is {state_word(job.state)}, not paused; only a paused job can "
                "be resumed",
                param="id",
                code="job_not_paused",
            )
        self.store.resumed(job_id, job.attempt)
        last = self.resume_step(job_id, self.job_dir(job_id))
        where = f"from the checkpoint at step {last}" if last else "from the start"
        await self.set_state(job, trainer_pb2.JOB_STATE_QUEUED, f"resumed; continues {where}")
        return job

    def last_checkpoint_step(self, job_id: str) -> int:
        """The step of the newest checkpoint the job's workers committed (0: none). From their
        events, not the job folder: a Kubernetes worker keeps it on a claim the service may
        not mount."""
        steps = [
            e.checkpoint_saved.step
            for e in self.store.events(job_id)
            if e.WhichOneof("kind") == "checkpoint_saved"
        ]
        return max(steps, default=0)

    def resume_step(self, job_id: str, job_dir: Path) -> int:
        """The step of the newest complete checkpoint, where the workers wrote it (a Kubernetes
        Job's claim); from their events where the runner cannot see that."""
        seen = self.runner.checkpoints(job_id, job_dir)
        if seen is None:
            return self.last_checkpoint_step(job_id)
        return seen[-1].step if seen else 0

    def checkpoint_kept(self, job_id: str, job_dir: Path) -> str:
        last = self.resume_step(job_id, job_dir)
        return f"its checkpoint at step {last} is kept" if last else "no checkpoint was committed"

    def _stop_in_background(self, worker: WorkerHandle, grace_seconds: float) -> None:
        task = asyncio.create_task(worker.stop(grace_seconds))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _pause_now(self, job: trainer_pb2.Job) -> None:
        last = self.resume_step(job.id, self.job_dir(job.id))
        message = f"paused at step {last}" if last else "paused before its first checkpoint"
        await self.set_state(job, trainer_pb2.JOB_STATE_PAUSED, message)

    async def stop_all(self) -> None:
        """Stop every worker without marking its job: a restarted service resumes them."""
        self.closing = True

        def grace(job_id: str) -> float:
            # A pausing worker is committing the checkpoint its job will wait at.
            pausing = self.store.pause_requested(job_id)
            return PAUSE_GRACE_SECONDS if pausing else self.cancel_grace_seconds

        workers = list(self._workers.items())
        await asyncio.gather(*(w.stop(grace(job_id)) for job_id, w in workers))

    def write_worker_config(
        self, job: trainer_pb2.Job, config: TrainingConfig | ExportConfig | EvalConfig
    ) -> Path:
        job_dir = self.job_dir(job.id)
        worker = WorkerConfig(
            job_id=job.id,
            training=config if isinstance(config, TrainingConfig) else None,
            export=config if isinstance(config, ExportConfig) else None,
            evaluation=config if isinstance(config, EvalConfig) else None,
            registry_target=self.registry_target,
            gateway_url=self.gateway_url,
            cache_dir=self.work_dir / "cache",
            deepspeed_config=job_dir / DEEPSPEED_FILE if config.num_gpus > 1 else None,
            labels=dict(job.labels),
        )
        return write_worker_config(worker, job_dir)

    async def run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        # A paused job's queue entry, or a second entry of a job resumed while queued.
        if job.state not in ACTIVE or job_id in self._running:
            return
        self._running.add(job_id)
        try:
            await self._run(job)
        finally:
            self._running.discard(job_id)

    async def _run(self, job: trainer_pb2.Job) -> None:
        job_id = job.id
        config = job_config_from_json(self.store.config(job_id))
        job_dir = self.write_worker_config(job, config)
        reason = "the trainer service stopped while it ran"
        while True:
            if self.store.cancel_requested(job_id):
                await self.set_state(job, trainer_pb2.JOB_STATE_CANCELLED, "cancelled")
                return
            if self.store.pause_requested(job_id):
                await self._pause_now(job)
                return
            # A pause is no crash: the limit counts the attempts since the last resume.
            since_resume = job.attempt - self.store.attempts_before_resume(job_id)
            if since_resume >= self.max_attempts:
                await self.fail(
                    job,
                    "worker_crashed",
                    f"the worker died {since_resume} times (last: attempt {job.attempt}, "
                    f"{reason}); {self.checkpoint_kept(job_id, job_dir)}",
                )
                return
            job.attempt += 1
            message = f"attempt {since_resume + 1} of {self.max_attempts}"
            if job.attempt != since_resume + 1:
                message += f" since the resume (attempt {job.attempt} of the job)"
            await self.set_state(job, trainer_pb2.JOB_STATE_VALIDATING, message)
            try:
                worker = await self.runner.start(
                    job.id, job_dir, config.num_gpus, config.zero_stage, job.attempt
                )
            except TuneplexError as exc:
                await self.fail(job, exc.code or "runner_failed", exc.message, exc.param or "")
                return
            self._workers[job_id] = worker
            if self.store.cancel_requested(job_id):  # asked while the worker was starting
                await worker.stop(self.cancel_grace_seconds)
            elif self.store.pause_requested(job_id):
                self._stop_in_background(worker, PAUSE_GRACE_SECONDS)
            try:
                failure = await self._follow(job, worker)
                code = await worker.wait()
            finally:
                self._workers.pop(job_id, None)
            job = self.store.get(job_id)
            if self.closing:
                return
            if self.store.cancel_requested(job_id):
                await self.set_state(
                    job, trainer_pb2.JOB_STATE_CANCELLED, "cancelled; checkpoints kept"
                )
                return
            if code == 0 and job.output:
                await self.set_state(
                    job, trainer_pb2.JOB_STATE_SUCCEEDED, f"published {job.output}"
                )
                return
            if code == EXIT_DOMAIN_ERROR and failure:
                await self.fail(
                    job,
                    failure.get("code", "job_failed"),
                    failure.get("message", ""),
                    failure.get("param", ""),
                )
                return
            if self.store.pause_requested(job_id):
                # Killed after the grace, or stopped before training: the newest complete
                # checkpoint is still where the next attempt starts.
                await self._pause_now(job)
                return
            if code == EXIT_PAUSED:
                # Stopped with a committed checkpoint though nobody here asked (a Kubernetes
                # eviction, a node drain): no crash, so it does not count against the limit.
                self.store.resumed(job_id, job.attempt)
            reason = describe_exit(code)
            last = self.resume_step(job_id, job_dir)
            resume = f"from the checkpoint at step {last}" if last else "from the start"
            if isinstance(config, EvalConfig):  # its results file is its checkpoint
                resume = "with the items already graded kept"
            await self.record(
                job_id,
                trainer_pb2.JobEvent(
                    log=trainer_pb2.LogLine(
                        message=f"worker attempt {job.attempt} ended with {reason}; "
                        f"resuming {resume}"
                    )
                ),
            )

    async def _follow(self, job: trainer_pb2.Job, worker) -> dict | None:
        """Store the worker's events; returns its structured failure, if it reported one."""
        failure = None
        async for ev in worker.events():
            kind = ev.get("type")
            if kind == "state" and ev.get("state") in STATES:
                if job.state == STATES[ev["state"]]:  # already there: just say what happens
                    await self.record(
                        job.id,
                        trainer_pb2.JobEvent(
                            log=trainer_pb2.LogLine(message=ev.get("message", ""))
                        ),
                    )
                else:
                    await self.set_state(job, STATES[ev["state"]], ev.get("message", ""))
            elif kind == "progress":
                fields = {k: ev.get(k, 0) for k in trainer_pb2.Progress.DESCRIPTOR.fields_by_name}
                progress = trainer_pb2.Progress(**{k: v or 0 for k, v in fields.items()})
                job.progress.CopyFrom(progress)
                self.store.save(job)
                await self.record(job.id, trainer_pb2.JobEvent(progress=progress))
            elif kind == "eval":
                await self.record(
                    job.id,
                    trainer_pb2.JobEvent(
                        eval=trainer_pb2.EvalMetrics(step=ev["step"], metrics=ev.get("metrics", {}))
                    ),
                )
            elif kind == "checkpoint":
                await self.record(
                    job.id,
                    trainer_pb2.JobEvent(
                        checkpoint_saved=trainer_pb2.Checkpoint(
                            step=ev["step"], create_time=now(), size_bytes=ev.get("size_bytes", 0)
                        )
                    ),
                )
            elif kind == "log":
                await self.record(
                    job.id,
                    trainer_pb2.JobEvent(log=trainer_pb2.LogLine(message=ev.get("message", ""))),
                )
            elif kind == "result":
                job.metrics.clear()
                job.metrics.update({k: float(v) for k, v in ev.get("metrics", {}).items()})
                self.store.save(job)
            elif kind == "published":
                job.output = ev["output"]
                self.store.save(job)
            elif kind == "checkpoint_published":
                self.store.record_published_checkpoint(job.id, ev["step"], ev["version"])
                await self.record(
                    job.id,
                    trainer_pb2.JobEvent(
                        log=trainer_pb2.LogLine(
                            message=f"checkpoint at step {ev['step']} published as {ev['version']}"
                        )
                    ),
                )
            elif kind == "failed":
                failure = ev
        return failure
