"""The thin HTTP routes of `/v1/evals`: parse, take the caller's owner (the /v1 router's
`require_api_key`), hand over to EvalStore / EvalRuns."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from services.gateway.evals.definitions import EvalStore
from services.gateway.evals.protocol import (
    EvalCreateRequest,
    EvalDeleted,
    EvalList,
    EvalObject,
    EvalUpdateRequest,
    OutputItem,
    OutputItemList,
    RunCreateRequest,
    RunList,
    RunObject,
)
from services.gateway.evals.runs import EvalRuns

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=256)]
Order = Literal["asc", "desc"]
RunStatus = Literal["queued", "in_progress", "completed", "canceled", "failed"]


def evals(request: Request) -> EvalStore:
    store: EvalStore = request.app.state.evals
    return store


def runs(request: Request) -> EvalRuns:
    service: EvalRuns = request.app.state.eval_runs
    return service


def owner(request: Request) -> str:
    name: str = request.state.owner  # set by require_api_key before any route runs
    return name


@router.post("/evals", response_model=EvalObject)
async def create_eval(body: EvalCreateRequest, request: Request) -> EvalObject:
    return await evals(request).create(owner(request), body)


@router.get("/evals", response_model=EvalList)
async def list_evals(
    request: Request,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    order_by: Literal["created_at", "updated_at"] = "created_at",
) -> EvalList:
    return await evals(request).list(
        owner(request), after=after, limit=limit, order=order, order_by=order_by
    )


@router.get("/evals/{eval_id}", response_model=EvalObject)
async def retrieve_eval(eval_id: str, request: Request) -> EvalObject:
    return await evals(request).retrieve(owner(request), eval_id)


@router.post("/evals/{eval_id}", response_model=EvalObject)
async def update_eval(eval_id: str, body: EvalUpdateRequest, request: Request) -> EvalObject:
    return await evals(request).update(owner(request), eval_id, body)


@router.delete("/evals/{eval_id}", response_model=EvalDeleted)
async def delete_eval(eval_id: str, request: Request) -> EvalDeleted:
    return await evals(request).delete(owner(request), eval_id)


@router.post("/evals/{eval_id}/runs", response_model=RunObject)
async def create_run(eval_id: str, body: RunCreateRequest, request: Request) -> RunObject:
    return await runs(request).create(owner(request), eval_id, body)


@router.get("/evals/{eval_id}/runs", response_model=RunList)
async def list_runs(
    eval_id: str,
    request: Request,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: RunStatus | None = None,
) -> RunList:
    return await runs(request).list(
        owner(request), eval_id, after=after, limit=limit, order=order, status=status
    )


@router.get("/evals/{eval_id}/runs/{run_id}", response_model=RunObject)
async def retrieve_run(eval_id: str, run_id: str, request: Request) -> RunObject:
    return await runs(request).retrieve(owner(request), eval_id, run_id)


@router.post("/evals/{eval_id}/runs/{run_id}/cancel", response_model=RunObject)
async def cancel_run(eval_id: str, run_id: str, request: Request) -> RunObject:
    return await runs(request).cancel(owner(request), eval_id, run_id)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items", response_model=OutputItemList)
async def list_output_items(
    eval_id: str,
    run_id: str,
    request: Request,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Literal["pass", "fail"] | None = None,
) -> OutputItemList:
    return await runs(request).output_items(
        owner(request), eval_id, run_id, after=after, limit=limit, order=order, status=status
    )


@router.get(
    "/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=OutputItem
)
async def retrieve_output_item(
    eval_id: str, run_id: str, output_item_id: str, request: Request
) -> OutputItem:
    return await runs(request).output_item(owner(request), eval_id, run_id, output_item_id)
