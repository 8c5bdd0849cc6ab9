"""build_app(): the gateway's FastAPI application, assembled once, with every error turned into
one OpenAI-shaped body whose status comes from the error table, never from the text."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import ERROR_TABLE, InvalidArgument, TuneplexError, shown
from services.common.version import tuneplex_version
from services.gateway import metrics
from services.gateway.api_router import attach_routers
from services.gateway.cache import VerifiedDiskCache
from services.gateway.engines import EngineManager
from services.gateway.evals.definitions import EvalStore
from services.gateway.evals.runs import EvalRuns
from services.gateway.fine_tuning.files import FileStore
from services.gateway.fine_tuning.jobs import FineTuningJobs
from services.gateway.fine_tuning.upstream import TrainerAccess
from services.gateway.http_errors import InternalErrorGuard, error_response
from services.gateway.on_demand import OnDemandModels
from services.gateway.promotion import PromotionSupport
from services.gateway.registry_guard import GuardedRegistry
from services.gateway.residency import AdapterResidency
from services.gateway.resolver import ModelResolver
from services.gateway.serving import OpenAIServing
from services.gateway.settings import GatewaySettings


def trainer_access(settings: GatewaySettings) -> TrainerAccess:
    """The trainer behind the fine-tuning API, when `trainer_target` names one."""
    target = settings.trainer_target
    if not target:
        return TrainerAccess(None)

    def connect() -> Any:  # a TrainerClient, imported at use as the registry client is
        from services.client.trainer import TrainerClient

        return TrainerClient(target, api_key=settings.trainer_api_key_value(),
                             timeout=settings.trainer_timeout_s)

    return TrainerAccess(connect)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if not loc and first.get("type") in ("model_attributes_type", "dict_type"):
        return "the request body must be a JSON object", None
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    where = f"{param}: " if param else ""
    return f"{where}{first.get('msg', 'invalid value')}{more}", param


def register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TuneplexError)
    async def _domain(_: Request, exc: TuneplexError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(InvalidArgument(message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = next((k for k, m in ERROR_TABLE.items() if m.http_status == exc.status_code),
                    InvalidArgument)
        # Starlette's bare "Not Found" / "Method Not Allowed" say nothing a client can fix.
        route = shown(request.url.path, 100)
        if exc.status_code == 404:
            message = f"unknown route {route}; the gateway serves the OpenAI API under /v1"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {route}"
        else:
            message = str(exc.detail)
        body = kind(message).to_openai()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
    # Anything else is a bug: InternalErrorGuard (a middleware, see build_app) answers it,
    # because an `Exception` handler here would make Starlette drop the connection after it.


class RequestMetrics:
    """Counts and times every response, streams included (timed to their last byte)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            metrics.IN_FLIGHT.dec()
            # The matched route's template (`/v1/files/{file_id}`), so ids do not become label
            # values; a path no route matched is `other`.
            route = getattr(scope.get("route"), "path", "other")
            metrics.REQUESTS.labels(route=route, status=str(status)).inc()
            metrics.REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - start)


def build_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from services.client.registry import AsyncRegistryClient

        client = AsyncRegistryClient(settings.registry_target,
                                     api_key=settings.registry_api_key_value(),
                                     timeout=settings.registry_timeout_s)
        registry = GuardedRegistry(client)
        engines: EngineManager | None = None
        on_demand: OnDemandModels | None = None
        trainer = trainer_access(settings)
        try:
            app.state.files = FileStore(client)
            app.state.fine_tuning_jobs = FineTuningJobs(trainer, app.state.files, client)
            cache = VerifiedDiskCache(settings.cache_path, settings.cache_max_bytes)
            resolver = ModelResolver(settings, registry, cache)
            app.state.evals = EvalStore(client, resolver)
            app.state.eval_runs = EvalRuns(trainer, app.state.evals, app.state.files, client,
                                           resolver)
            bases = await resolver.prepare_bases()
            # The cache keeps what engines read: the bases, and the models of on-demand engines.
            def pinned() -> set[str]:
                keys = set(resolver.base_keys())
                return keys | on_demand.keys() if on_demand is not None else keys

            residency = AdapterResidency(settings, registry, cache, pinned=pinned)
            engines = EngineManager(settings, listener=residency)
            engines.serve(bases)
            if settings.on_demand_engines and engines.manages_processes:
                # What engines read (bases, resident adapters) stays while a model downloads.
                on_demand = OnDemandModels(settings, registry, cache, engines, trainer,
                                           residency.cache_keys, bases=resolver.bases)
            app.state.engines = engines
            app.state.serving = OpenAIServing(resolver, residency, engines,
                                              default_max_tokens=settings.default_max_tokens,
                                              on_demand=on_demand)
            app.state.promotion = PromotionSupport(resolver, residency, engines)
            engines.start()  # engines come up in the background; /health says when
            if on_demand is not None:
                on_demand.start()
            yield
        finally:
            if on_demand is not None:
                await on_demand.stop()
            if engines is not None:
                await engines.stop()
            trainer.close()
            await client.close()

    app = FastAPI(title="tuneplex gateway", version=tuneplex_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    register_error_handlers(app)
    attach_routers(app)
    app.add_middleware(InternalErrorGuard)  # inside RequestMetrics, so a bug counts as a 500
    app.add_middleware(RequestMetrics)
    return app
