"""Python SDK of the trainer: ``TrainerClient`` (blocking), typed wrappers over the stubs that
raise the domain errors of ``services.common.errors``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from services.client.grpc_channel import BlockingClient, domain_errors
from services.common.errors import InvalidArgument
from services.common.stubs import trainer_pb2, trainer_pb2_grpc
from services.common.training_spec_proto import spec_from_values

FINAL_STATES = frozenset(
    {
        trainer_pb2.JOB_STATE_SUCCEEDED,
        trainer_pb2.JOB_STATE_FAILED,
        trainer_pb2.JOB_STATE_CANCELLED,
    }
)


def state_name(state: int) -> str:
    return trainer_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def training_spec(**settings) -> trainer_pb2.TrainingSpec:
    """A ``TrainingSpec`` from settings named as the fields of ``TrainingConfig``
    (``services/common/training_spec.py``): ``training_spec(base_model=..., dataset=...,
    output_name=..., lora_r=8, learning_rate=1e-3, precision="bf16")``. What is left out takes
    the trainer's default; an unknown name is ``InvalidArgument`` at once."""
    return spec_from_values(settings)


SAMPLING_SETTINGS = ("temperature", "max_tokens", "top_p", "seed")
EVAL_BACKENDS = {
    "auto": trainer_pb2.EVAL_BACKEND_UNSPECIFIED,
    "gateway": trainer_pb2.EVAL_BACKEND_GATEWAY,
    "local": trainer_pb2.EVAL_BACKEND_LOCAL,
}


def grader_structs(graders: list[dict[str, Any]]) -> list[struct_pb2.Struct]:
    """OpenAI-shaped grader objects as the ``google.protobuf.Struct`` the specs carry."""
    return [json_format.ParseDict(g, struct_pb2.Struct()) for g in graders]


def eval_spec(
    model: str, eval_set: str, graders: list[dict[str, Any]], **settings: Any
) -> trainer_pb2.EvalSpec:
    """An ``EvalSpec``: score ``model`` (an adapter or model ref) on ``eval_set`` with
    ``graders``. ``settings``: the sampling (``temperature``, ``max_tokens``, ``top_p``,
    ``seed``), ``concurrency``, ``backend`` (auto, gateway, local) and ``output_name``; what is
    left out takes the trainer's default (greedy, 256 tokens, 16 at once, auto)."""
    unknown = set(settings) - {*SAMPLING_SETTINGS, "concurrency", "backend", "output_name"}
    if unknown:
        raise InvalidArgument(f"unknown eval setting(s): {', '.join(sorted(unknown))}")
    backend = settings.get("backend") or "auto"
    if backend not in EVAL_BACKENDS:
        raise InvalidArgument(
            f"backend must be one of {', '.join(EVAL_BACKENDS)}, got {backend!r}", param="backend"
        )
    sampling = {k: settings[k] for k in SAMPLING_SETTINGS if settings.get(k) is not None}
    return trainer_pb2.EvalSpec(
        model=model,
        eval_set=eval_set,
        graders=grader_structs(graders),
        sampling=trainer_pb2.SamplingParams(**sampling),
        concurrency=settings.get("concurrency") or 0,
        backend=EVAL_BACKENDS[backend],
        output_name=settings.get("output_name") or "",
    )


def job_spec(
    spec: trainer_pb2.TrainingSpec
    | trainer_pb2.EvalSpec
    | trainer_pb2.ExportSpec
    | trainer_pb2.JobSpec,
) -> trainer_pb2.JobSpec:
    if isinstance(spec, trainer_pb2.JobSpec):
        return spec
    if isinstance(spec, trainer_pb2.EvalSpec):
        return trainer_pb2.JobSpec(evaluation=spec)
    if isinstance(spec, trainer_pb2.ExportSpec):
        return trainer_pb2.JobSpec(export=spec)
    return trainer_pb2.JobSpec(training=spec)


class TrainerClient(BlockingClient):
    """Blocking client. ``target`` is ``host:port``; use as a context manager or ``close()``."""

    def __init__(self, target: str, api_key: str | None = None, timeout: float | None = None):
        super().__init__(trainer_pb2_grpc.TrainerServiceStub, target, api_key, timeout)

    def create_job(
        self,
        training: trainer_pb2.TrainingSpec
        | trainer_pb2.EvalSpec
        | trainer_pb2.ExportSpec
        | trainer_pb2.JobSpec,
        *,
        idempotency_key: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> trainer_pb2.Job:
        """Queue a job: a ``TrainingSpec`` (fine-tuning), an ``EvalSpec`` (``eval_spec``), an
        ``ExportSpec`` or a whole ``JobSpec`` (e.g. one whose ``evaluation`` is an
        ``EvalSpec``). ``labels`` are kept on the job (``list_jobs`` filters on them) and on
        the versions it publishes."""
        request = trainer_pb2.CreateJobRequest(
            spec=job_spec(training), idempotency_key=idempotency_key, labels=labels or {}
        )
        return self._unary("CreateJob", request).job

    def create_export(
        self,
        adapter: str,
        name: str,
        *,
        precision: trainer_pb2.Precision = trainer_pb2.PRECISION_UNSPECIFIED,
        ollama_modelfile: bool = False,
        idempotency_key: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> trainer_pb2.Job:
        """Queue an export job: merge ``adapter`` (`name[@version]`) into its base model and
        publish the result as the model ``name``. ``precision`` is a ``trainer_pb2.Precision``
        (unspecified: bf16); ``labels`` are kept on the job and the model it publishes."""
        export = trainer_pb2.ExportSpec(
            adapter=adapter,
            output_name=name,
            precision=precision,
            ollama_modelfile=ollama_modelfile,
        )
        request = trainer_pb2.CreateJobRequest(
            spec=trainer_pb2.JobSpec(export=export),
            idempotency_key=idempotency_key,
            labels=labels or {},
        )
        return self._unary("CreateJob", request).job

    def get_job(self, job_id: str) -> trainer_pb2.Job:
        return self._unary("GetJob", trainer_pb2.GetJobRequest(id=job_id)).job

    def list_jobs(
        self,
        state: trainer_pb2.JobState = trainer_pb2.JOB_STATE_UNSPECIFIED,
        page_size: int = 50,
        labels: Mapping[str, str] | None = None,
    ) -> list[trainer_pb2.Job]:
        """Every job, newest first; only those in ``state`` and carrying every pair of
        ``labels`` when given."""
        jobs, token = [], ""
        while True:
            page = self._unary(
                "ListJobs",
                trainer_pb2.ListJobsRequest(
                    state=state, page_size=page_size, page_token=token, labels=labels or {}
                ),
            )
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                return jobs

    def cancel_job(self, job_id: str) -> trainer_pb2.Job:
        return self._unary("CancelJob", trainer_pb2.CancelJobRequest(id=job_id)).job

    def pause_job(self, job_id: str) -> trainer_pb2.Job:
        """Ask a job to stop at a committed checkpoint and wait in PAUSED (a queued job pauses
        at once; a running one is PAUSED once its worker has saved). ``FailedPrecondition``
        for a finished job."""
        return self._unary("PauseJob", trainer_pb2.PauseJobRequest(id=job_id)).job

    def resume_job(self, job_id: str) -> trainer_pb2.Job:
        """Queue a PAUSED job again; it continues from its newest complete checkpoint.
        ``FailedPrecondition`` for a job that is not paused."""
        return self._unary("ResumeJob", trainer_pb2.ResumeJobRequest(id=job_id)).job

    def stream_events(self, job_id: str, after_sequence: int = 0) -> Iterator[trainer_pb2.JobEvent]:
        """Events recorded so far, then live ones, until the job reaches a final state."""
        request = trainer_pb2.StreamJobEventsRequest(id=job_id, after_sequence=after_sequence)
        with domain_errors():
            for response in self._stub.StreamJobEvents(request, metadata=self._metadata):
                yield response.event

    def list_checkpoints(self, job_id: str) -> list[trainer_pb2.Checkpoint]:
        request = trainer_pb2.ListCheckpointsRequest(id=job_id)
        return list(self._unary("ListCheckpoints", request).checkpoints)

    def estimate_memory(
        self, training: trainer_pb2.TrainingSpec | trainer_pb2.EvalSpec | trainer_pb2.JobSpec
    ) -> trainer_pb2.EstimateJobMemoryResponse:
        request = trainer_pb2.EstimateJobMemoryRequest(spec=job_spec(training))
        return self._unary("EstimateJobMemory", request)
