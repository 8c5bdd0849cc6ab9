"""Thin HTTP routes: validate, authenticate (the caller's key names its owner), hand over to
OpenAIServing; the files and fine-tuning routes are in fine_tuning/routes.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from services.common.errors import PermissionDenied, Unavailable
from services.common.metrics import metrics_payload
from services.gateway import graders_api
from services.gateway.engines import EngineState
from services.gateway.evals import routes as eval_routes
from services.gateway.fine_tuning import routes as fine_tuning_routes
from services.gateway.fine_tuning.owners import DEFAULT_OWNER, LOCAL_OWNER, owner_of
from services.gateway.http_errors import retry_headers
from services.gateway.promotion import PromotionSupport
from services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    RefreshRequest,
    RefreshResponse,
    WarmRequest,
    WarmResponse,
)
from services.gateway.serving import OpenAIServing

DEGRADED_HEADER = "x-tuneplex-degraded"


def serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


def promotion(request: Request) -> PromotionSupport:
    return request.app.state.promotion


async def require_api_key(request: Request) -> str:
    """The caller's owner (the name of the key it sent; `local` when no key is configured),
    also kept as `request.state.owner`; Unauthenticated for a missing or wrong key."""
    owner = owner_of(request.headers.get("authorization"),
                     request.app.state.settings.owner_keys())
    request.state.owner = owner
    return owner


async def require_operator(request: Request) -> None:
    """The admin routes act on every owner's adapters (warm, refresh): only the operator's key
    (`api_key`, owner `default`) or a keyless loopback gateway may call them, never a team's."""
    owner = await require_api_key(request)
    if owner not in (DEFAULT_OWNER, LOCAL_OWNER):
        raise PermissionDenied(
            "this API key may not use the gateway's admin routes; they take the operator's key",
            code="operator_only",
        )


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 404, 429, 503, 504)
}
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)
# Ours, beside OpenAI's surface rather than in it: the gateway's side of a promotion.
admin = APIRouter(prefix="/tuneplex/v1", dependencies=[Depends(require_operator)],
                  responses=_ERRORS)
ops = APIRouter()


@v1.post("/chat/completions")
async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Response:
    body = request.model_dump(exclude_unset=True)
    return await serving(raw_request).create(
        "/v1/chat/completions", "/v1/chat/completions", body, raw_request,
        owner=raw_request.state.owner)


@v1.post("/completions")
async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
    body = request.model_dump(exclude_unset=True)
    return await serving(raw_request).create(
        "/v1/completions", "/v1/completions", body, raw_request, owner=raw_request.state.owner)


@v1.get("/models", response_model=ModelList)
async def list_models(raw_request: Request) -> JSONResponse:
    listing = await serving(raw_request).list_models(owner=raw_request.state.owner)
    if listing.degraded is None:
        return JSONResponse(listing.model_dump(exclude={"degraded"}))
    return JSONResponse(listing.model_dump(),
                        headers={DEGRADED_HEADER: "registry-unavailable"})


@v1.get("/models/{model:path}", response_model=ModelCard)
async def retrieve_model(model: str, raw_request: Request) -> ModelCard:
    return await serving(raw_request).retrieve_model(model, owner=raw_request.state.owner)


@admin.post("/warm", response_model=WarmResponse)
async def warm(request: WarmRequest, raw_request: Request) -> WarmResponse:
    """Load a pinned adapter version where the version it is about to replace is loaded."""
    return await promotion(raw_request).warm(request.model, request.replaces)


@admin.post("/refresh", response_model=RefreshResponse)
async def refresh(request: RefreshRequest, raw_request: Request) -> RefreshResponse:
    """Forget the cached resolutions of an adapter name (an alias moved) and resolve again."""
    return await promotion(raw_request).refresh(request.model)


@ops.get("/health")
async def health(raw_request: Request) -> JSONResponse:
    """200 once an engine can serve; 503 while none can: `starting` while one is (re)starting,
    `down` when none is coming. A gateway with no base model of its own serves on demand only:
    it can serve as soon as it runs."""
    engines = raw_request.app.state.engines.engines
    states = {e.id: e.state.value for e in engines}
    # Health is the configured bases' (an on-demand engine comes and goes with its model).
    own = [e for e in engines if not e.on_demand]
    on_demand_only = raw_request.app.state.serving.serves_on_demand and not own
    if on_demand_only or any(e.state == EngineState.READY for e in own):
        return JSONResponse({"status": "ok", "engines": states})
    starting = any(e.state == EngineState.STARTING for e in own)
    return JSONResponse({"status": "starting" if starting else "down", "engines": states},
                        status_code=503, headers=retry_headers(Unavailable("no engine")))


@ops.get("/metrics")
async def metrics() -> Response:
    body, content_type = metrics_payload()
    return Response(body, media_type=content_type)


def attach_routers(app: FastAPI) -> None:
    app.include_router(v1)
    app.include_router(graders_api.router, prefix="/v1", dependencies=v1.dependencies)
    app.include_router(fine_tuning_routes.router, prefix="/v1", dependencies=v1.dependencies,
                       responses=_ERRORS)
    app.include_router(eval_routes.router, prefix="/v1", dependencies=v1.dependencies,
                       responses=_ERRORS)
    app.include_router(admin)
    app.include_router(ops)
