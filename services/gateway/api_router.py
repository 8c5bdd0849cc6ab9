"""Thin HTTP routes: validate, authenticate, hand over to OpenAIServing."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from services.common.auth import check_bearer
from services.common.metrics import metrics_payload
from services.gateway.engines import EngineState
from services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelList,
)
from services.gateway.serving import OpenAIServing


def serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


async def require_api_key(request: Request) -> None:
    check_bearer(request.headers.get("authorization"), request.app.state.settings.api_key_value())


_ERRORS = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 404, 429, 503, 504)
}
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)
ops = APIRouter()


@v1.post("/chat/completions")
async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Response:
    body = request.model_dump(exclude_unset=True)
    return await serving(raw_request).create(
        "/v1/chat/completions", "/v1/chat/completions", body, raw_request)


@v1.post("/completions")
async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
    body = request.model_dump(exclude_unset=True)
    return await serving(raw_request).create(
        "/v1/completions", "/v1/completions", body, raw_request)


@v1.get("/models", response_model=ModelList)
async def list_models(raw_request: Request) -> ModelList:
    return await serving(raw_request).list_models()


@ops.get("/health")
async def health(raw_request: Request) -> JSONResponse:
    """200 once an engine can serve; 503 while none can (starting, restarting)."""
    engines = raw_request.app.state.engines.engines
    states = {e.id: e.state.value for e in engines}
    ready = any(e.state == EngineState.READY for e in engines)
    return JSONResponse({"status": "ok" if ready else "unavailable", "engines": states},
                        status_code=200 if ready else 503)


@ops.get("/metrics")
async def metrics() -> Response:
    body, content_type = metrics_payload()
    return Response(body, media_type=content_type)


def attach_routers(app: FastAPI) -> None:
    app.include_router(v1)
    app.include_router(ops)
