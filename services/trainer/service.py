"""The ``tuneplex.trainer.v1.TrainerService`` servicer: a thin layer over admission (validate,
pin, estimate), the job store, the queue and the supervisor."""

from __future__ import annotations

import asyncio
import uuid

from services.common.errors import AlreadyExists
from services.common.stubs import trainer_pb2, trainer_pb2_grpc
from services.trainer.admission import Admission
from services.trainer.checkpoints import complete_checkpoints
from services.trainer.eval_spec import EvalConfig, eval_config_to_proto
from services.trainer.export_spec import ExportConfig, export_config_to_proto
from services.trainer.memory import MemoryEstimate
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

    async def CreateJob(self, request, context):
        key = request.idempotency_key
        if key and (existing := self.store.by_idempotency_key(key)) is not None:
            return trainer_pb2.CreateJobResponse(job=self._same_request(existing, request))
        admitted = await asyncio.to_thread(self.admission.admit, request.spec)
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
        )
        job, created = self.store.create(job, admitted.config.model_dump_json())
        if not created:  # a concurrent call with the same key won
            return trainer_pb2.CreateJobResponse(job=self._same_request(job, request))
        await self.supervisor.record(
            job.id,
            trainer_pb2.JobEvent(
                state_changed=trainer_pb2.StateChanged(state=job.state, message="queued")
            ),
        )
        self.queue.submit(job.id)
        return trainer_pb2.CreateJobResponse(job=job)

    def _same_request(self, job: trainer_pb2.Job, request) -> trainer_pb2.Job:
        """AIP-155: a reused key must come with the same request."""
        if _identity(request.spec) != _identity(job.spec):
            raise AlreadyExists(
                f"idempotency key {request.idempotency_key!r} was used for job {job.id} with a "
                "different spec; use a new key for a new job",
                param="idempotency_key",
                code="idempotency_key_reused",
            )
        return job

    async def GetJob(self, request, context):
        return trainer_pb2.GetJobResponse(job=self.store.get(request.id))

    async def ListJobs(self, request, context):
        jobs, token = self.store.list(request.state, request.page_size, request.page_token)
        return trainer_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(self, request, context):
        return trainer_pb2.CancelJobResponse(job=await self.supervisor.cancel(request.id))

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
        found = complete_checkpoints(self.supervisor.job_dir(request.id) / "checkpoints")
        checkpoints = []
        for c in found:
            cp = trainer_pb2.Checkpoint(step=c.step, size_bytes=c.size_bytes)
            cp.create_time.FromNanoseconds(int(c.mtime * 1e9))
            checkpoints.append(cp)
        return trainer_pb2.ListCheckpointsResponse(checkpoints=checkpoints)

    async def EstimateJobMemory(self, request, context):
        admitted = await asyncio.to_thread(self.admission.admit, request.spec, enforce_fit=False)
        return memory_response(admitted.estimate)


def memory_response(est: MemoryEstimate) -> trainer_pb2.EstimateJobMemoryResponse:
    return trainer_pb2.EstimateJobMemoryResponse(
        peak_bytes=est.peak_bytes,
        terms=[trainer_pb2.MemoryTerm(name=n, bytes=b) for n, b in est.terms],
        available_bytes=est.available_bytes,
        device=est.device,
    )


def _identity(spec: trainer_pb2.JobSpec) -> tuple[str | None, str, str]:
    """What makes two requests under one idempotency key the same job: the kind of work, its
    output name and the name (not the version) of what it starts from."""
    if spec.WhichOneof("kind") == "export":
        return "export", spec.export.output_name, spec.export.adapter.split("@")[0]
    if spec.WhichOneof("kind") == "evaluation":
        # The output name defaults to the eval set's at admission, so the request's may be
        # empty where the stored one is not: what is scored on what identifies the job.
        e = spec.evaluation
        return "evaluation", e.model.split("@")[0], e.eval_set.split("@")[0]
    return spec.WhichOneof("kind"), spec.training.output_name, spec.training.dataset.split("@")[0]
