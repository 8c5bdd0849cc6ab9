"""The ``tuneplex.trainer.v1.TrainerService`` servicer: a thin layer over admission (validate,
pin, estimate), the job store, the queue and the supervisor."""

from __future__ import annotations

import asyncio
import json
import uuid

from services.common.errors import AlreadyExists, TuneplexError
from services.common.labels import check_labels
from services.common.stubs import trainer_pb2, trainer_pb2_grpc
from services.trainer.admission import Admission, JobConfig
from services.trainer.eval_spec import EvalConfig, eval_config_to_proto
from services.trainer.export_spec import ExportConfig, export_config_to_proto, job_config_from_json
from services.trainer.memory import ActiveJob, MemoryEstimate
from services.trainer.queue import JobQueue
from services.trainer.spec import training_config_to_proto
from services.trainer.store import TERMINAL, JobStore, now
from services.trainer.supervisor import JobSupervisor

# A stream with nothing new re-checks the store this often (missed notifications, restarts).
STREAM_POLL_SECONDS = 1.0


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(
        self, store: JobStore, admission: Admission, queue: JobQueue, supervisor: JobSupervisor
    ):
        self.store = store
        self.admission = admission
        self.queue = queue
        self.supervisor = supervisor
        # One CreateJob at a time from the key lookup to the insert: each admission then sees
        # the jobs admitted before it (their memory), and a reused key the job it made.
        self._creating = asyncio.Lock()

    async def CreateJob(self, request, context):
        async with self._creating:
            return trainer_pb2.CreateJobResponse(job=await self._create(request))

    async def _create(self, request: trainer_pb2.CreateJobRequest) -> trainer_pb2.Job:
        key = request.idempotency_key
        labels = check_labels(request.labels)
        if key and (existing := self.store.by_idempotency_key(key)) is not None:
            return self._same_request(existing, request)
        admitted = await asyncio.to_thread(
            self.admission.admit,
            request.spec,
            active=self._active_jobs(),
            slots=self.queue.concurrency,
        )
        spec = trainer_pb2.JobSpec(runner=request.spec.runner)
        if isinstance(admitted.config, ExportConfig):
            spec.export.CopyFrom(export_config_to_proto(admitted.config))
        elif isinstance(admitted.config, EvalConfig):
            spec.evaluation.CopyFrom(eval_config_to_proto(admitted.config))
        else:
            spec.training.CopyFrom(training_config_to_proto(admitted.config))
        job = trainer_pb2.Job(
            id=f"job-{uuid.uuid4().hex[:12]}",
            spec=spec,
            state=trainer_pb2.JOB_STATE_QUEUED,
            create_time=now(),
            idempotency_key=key,
            estimated_peak_memory_bytes=admitted.estimate.peak_bytes,
            labels=labels,
        )
        job, created = self.store.create(
            job, admitted.config.model_dump_json(), admitted.request.model_dump_json()
        )
        if not created:  # another trainer process on this store won the key
            return self._same_request(job, request)
        await self.supervisor.record(
            job.id,
            trainer_pb2.JobEvent(
                state_changed=trainer_pb2.StateChanged(state=job.state, message="queued")
            ),
        )
        self.queue.submit(job.id)
        return job

    def _same_request(
        self, job: trainer_pb2.Job, request: trainer_pb2.CreateJobRequest
    ) -> trainer_pb2.Job:
        """AIP-155: a reused key returns its job for the same request, normalised (defaults
        applied, so spelling a default out changes nothing), and refuses any other."""
        given = self.admission.normalise(request.spec)
        differ = differences(self._stored_request(job), given)
        if dict(job.labels) != dict(request.labels):
            differ = sorted([*differ, "labels"])
        if differ:
            raise AlreadyExists(
                f"idempotency key {request.idempotency_key!r} was used for job {job.id} with a "
                f"different request (it differs in {', '.join(differ)}); use a new key for a "
                "new job",
                param="idempotency_key",
                code="idempotency_key_reused",
            )
        return job

    def _stored_request(self, job: trainer_pb2.Job) -> JobConfig | None:
        raw = self.store.request(job.id)
        if raw is not None:
            return job_config_from_json(raw)
        # Stored before requests were kept: its spec (versions pinned) is all there is.
        try:
            return self.admission.normalise(job.spec)
        except TuneplexError:
            return None

    def _active_jobs(self) -> list[ActiveJob]:
        """The jobs admitted and not finished, with the device each one's estimate is on."""
        return [
            ActiveJob(
                job.id,
                self.admission.job_device(job_config_from_json(self.store.config(job.id))).name,
                job.estimated_peak_memory_bytes,
            )
            for job in self.store.active()
        ]

    async def GetJob(self, request, context):
        return trainer_pb2.GetJobResponse(job=self.store.get(request.id))

    async def ListJobs(self, request, context):
        wanted = check_labels(request.labels)
        jobs, token = self.store.list(request.state, request.page_size, request.page_token, wanted)
        return trainer_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(self, request, context):
        return trainer_pb2.CancelJobResponse(job=await self.supervisor.cancel(request.id))

    async def PauseJob(self, request, context):
        return trainer_pb2.PauseJobResponse(job=await self.supervisor.pause(request.id))

    async def ResumeJob(self, request, context):
        job = await self.supervisor.resume(request.id)
        self.queue.submit(job.id)
        return trainer_pb2.ResumeJobResponse(job=job)

    async def StreamJobEvents(self, request, context):
        self.store.get(request.id)  # NotFound before the stream starts
        sent = request.after_sequence
        while True:
            for event in self.store.events(request.id, sent):
                yield trainer_pb2.StreamJobEventsResponse(event=event)
                sent = event.sequence
            if self.store.get(request.id).state in TERMINAL and not self.store.events(
                request.id, sent
            ):
                return
            async with self.supervisor.changed:
                try:
                    await asyncio.wait_for(self.supervisor.changed.wait(), STREAM_POLL_SECONDS)
                except asyncio.TimeoutError:
                    pass

    async def ListCheckpoints(self, request, context):
        self.store.get(request.id)
        events = self.store.events(request.id)
        metrics = checkpoint_metrics(events)
        published = self.store.published_checkpoints(request.id)
        checkpoints = []
        for cp in self._complete_checkpoints(request.id, events):
            cp.metrics.update(metrics.get(cp.step, {}))
            cp.published = published.get(cp.step, "")
            checkpoints.append(cp)
        return trainer_pb2.ListCheckpointsResponse(checkpoints=checkpoints)

    def _complete_checkpoints(
        self, job_id: str, events: list[trainer_pb2.JobEvent]
    ) -> list[trainer_pb2.Checkpoint]:
        """Where the workers wrote them (a Kubernetes Job's claim, when the trainer mounts it);
        from the workers' checkpoint events where the runner cannot see them."""
        seen = self.supervisor.runner.checkpoints(job_id, self.supervisor.job_dir(job_id))
        if seen is None:
            saved = {
                e.checkpoint_saved.step: e.checkpoint_saved
                for e in events
                if e.WhichOneof("kind") == "checkpoint_saved"
            }
            return [
                trainer_pb2.Checkpoint(
                    step=c.step, size_bytes=c.size_bytes, create_time=c.create_time
                )
                for _, c in sorted(saved.items())
            ]
        found = []
        for c in seen:
            cp = trainer_pb2.Checkpoint(step=c.step, size_bytes=c.size_bytes)
            cp.create_time.FromNanoseconds(int(c.mtime * 1e9))
            found.append(cp)
        return found

    async def EstimateJobMemory(self, request, context):
        admitted = await asyncio.to_thread(
            self.admission.admit,
            request.spec,
            enforce_fit=False,
            active=self._active_jobs(),
            slots=self.queue.concurrency,
        )
        return memory_response(admitted.estimate)


# The Progress fields that are metrics of the weights at a step (the rest describe the run).
CHECKPOINT_PROGRESS_METRICS = ("loss", "learning_rate", "grad_norm", "epoch", "trained_tokens")


def checkpoint_metrics(events: list[trainer_pb2.JobEvent]) -> dict[int, dict[str, float]]:
    """Step -> the metrics logged at that step before its checkpoint was saved: the progress
    (loss, learning rate, ...) and the evaluation (eval_loss, ...). An attempt that died after
    a checkpoint logs later steps again on resume; each checkpoint keeps what led to it."""
    progress: dict[int, dict[str, float]] = {}
    evals: dict[int, dict[str, float]] = {}
    found: dict[int, dict[str, float]] = {}
    for event in events:
        kind = event.WhichOneof("kind")
        if kind == "progress":
            p = event.progress
            progress[p.step] = {
                name: float(getattr(p, name)) for name in CHECKPOINT_PROGRESS_METRICS
            }
        elif kind == "eval":
            # One step can log several: DPO's training rewards, then a validation pass.
            evals.setdefault(event.eval.step, {}).update(event.eval.metrics)
        elif kind == "checkpoint_saved":
            step = event.checkpoint_saved.step
            found[step] = progress.get(step, {}) | evals.get(step, {})
    return found


def memory_response(est: MemoryEstimate) -> trainer_pb2.EstimateJobMemoryResponse:
    return trainer_pb2.EstimateJobMemoryResponse(
        peak_bytes=est.peak_bytes,
        terms=[trainer_pb2.MemoryTerm(name=n, bytes=b) for n, b in est.terms],
        available_bytes=est.available_bytes,
        device=est.device,
    )


def differences(stored: JobConfig | None, given: JobConfig) -> list[str]:
    """The settings in which two normalised requests differ (``the kind of job`` when they are
    not the same kind, ``the spec`` when the stored one is unreadable); none for the same
    request."""
    if stored is None:
        return ["the spec"]
    if type(stored) is not type(given):
        return ["the kind of job"]
    before, after = json.loads(stored.model_dump_json()), json.loads(given.model_dump_json())
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
