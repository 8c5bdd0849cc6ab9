"""The thin HTTP routes of `/v1/files` and `/v1/fine_tuning/jobs`: parse, take the caller's
owner (the `require_api_key` dependency of the /v1 router), hand over to FileStore /
FineTuningJobs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from services.gateway.fine_tuning.files import MAX_LIST_LIMIT, FileStore, clean_filename
from services.gateway.fine_tuning.jobs import (
    DEFAULT_LIMIT,
    FineTuningJobs,
    metadata_filter,
)
from services.gateway.fine_tuning.protocol import (
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    JobCheckpointList,
    JobCreateRequest,
    JobEventList,
    JobList,
)

router = APIRouter()


def files(request: Request) -> FileStore:
    store: FileStore = request.app.state.files
    return store


def jobs(request: Request) -> FineTuningJobs:
    service: FineTuningJobs = request.app.state.fine_tuning_jobs
    return service


def owner(request: Request) -> str:
    # Set by require_api_key, which guards every /v1 route before it runs.
    name: str = request.state.owner
    return name


Limit = Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)]
JobLimit = Annotated[int, Query(ge=1, le=100)]


@router.post("/files", response_model=FileObject)
async def create_file(
    request: Request,
    file: Annotated[UploadFile, File(description="A JSONL file.")],
    purpose: Annotated[str, Form(max_length=64, examples=["fine-tune"])],
) -> FileObject:
    return await files(request).create(
        owner(request), clean_filename(file.filename), purpose, file.file
    )


@router.get("/files", response_model=FileList)
async def list_files(
    request: Request,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = MAX_LIST_LIMIT,
    after: Annotated[str | None, Query(max_length=256)] = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    return await files(request).list(
        owner(request), purpose=purpose, limit=limit, after=after, order=order
    )


@router.get("/files/{file_id}", response_model=FileObject)
async def retrieve_file(file_id: str, request: Request) -> FileObject:
    return await files(request).retrieve(owner(request), file_id)


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, request: Request) -> FileDeleted:
    return await files(request).delete(owner(request), file_id)


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    body = await files(request).content(owner(request), file_id)
    return Response(body, media_type="application/jsonl")


@router.post("/fine_tuning/jobs", response_model=FineTuningJob)
async def create_job(body: JobCreateRequest, request: Request) -> FineTuningJob:
    return await jobs(request).create(owner(request), body)


@router.get("/fine_tuning/jobs", response_model=JobList)
async def list_jobs(
    request: Request,
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: JobLimit = DEFAULT_LIMIT,
) -> JobList:
    wanted = metadata_filter(dict(request.query_params))
    return await jobs(request).list(owner(request), after=after, limit=limit, metadata=wanted)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}", response_model=FineTuningJob)
async def retrieve_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
    return await jobs(request).retrieve(owner(request), fine_tuning_job_id)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
    return await jobs(request).cancel(owner(request), fine_tuning_job_id)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
async def pause_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
    return await jobs(request).pause(owner(request), fine_tuning_job_id)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
async def resume_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
    return await jobs(request).resume(owner(request), fine_tuning_job_id)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", response_model=JobEventList)
async def list_events(
    fine_tuning_job_id: str,
    request: Request,
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = DEFAULT_LIMIT,
) -> JobEventList:
    return await jobs(request).events(owner(request), fine_tuning_job_id, after=after, limit=limit)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", response_model=JobCheckpointList)
async def list_checkpoints(
    fine_tuning_job_id: str,
    request: Request,
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: JobLimit = 10,
) -> JobCheckpointList:
    return await jobs(request).checkpoints(
        owner(request), fine_tuning_job_id, after=after, limit=limit
    )
