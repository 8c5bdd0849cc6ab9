"""build_app(): the gateway's FastAPI application, assembled once, with every error turned into
one OpenAI-shaped body whose status comes from the error table, never from the text."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import (
    ERROR_TABLE,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    TuneplexError,
    Unavailable,
)
from services.common.version import tuneplex_version
from services.gateway import metrics
from services.gateway.adapters import AdapterResolver
from services.gateway.api_router import attach_routers
from services.gateway.cache import ArtifactCache
from services.gateway.engines import EngineManager
from services.gateway.serving import OpenAIServing
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_ROUTES = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}
_RETRYABLE = (Unavailable, ResourceExhausted)


def error_response(err: TuneplexError) -> JSONResponse:
    if isinstance(err, Internal) or err.mapping is ERROR_TABLE[Internal]:
        log.error("internal error: %s", err.message)
        err = Internal("internal error")
    headers = {"x-should-retry": "true"} if isinstance(err, _RETRYABLE) else None
    return JSONResponse(err.to_openai(), status_code=err.mapping.http_status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
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
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = next((k for k, m in ERROR_TABLE.items() if m.http_status == exc.status_code),
                    InvalidArgument)
        body = kind(str(exc.detail)).to_openai()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(Internal("internal error"))


class RequestMetrics:
    """Counts and times every response, streams included (timed to their last byte)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in _ROUTES else "other"
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
            metrics.REQUESTS.labels(route=route, status=str(status)).inc()
            metrics.REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - start)


def build_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from services.client.registry import AsyncRegistryClient

        registry = AsyncRegistryClient(settings.registry_target,
                                       api_key=settings.registry_api_key_value(),
                                       timeout=settings.registry_timeout_s)
        engines: EngineManager | None = None
        try:
            resolver: Any = None

            def in_use() -> set[str]:
                keys = resolver.in_use() if resolver else set()
                for engine in engines.engines if engines else ():
                    keys |= {a.cache_key for a in engine.adapters.values()}
                return keys

            cache = ArtifactCache(settings.cache_path, settings.cache_max_bytes, in_use)
            resolver = AdapterResolver(settings, registry, cache)
            bases = await resolver.prepare_bases()
            engines = EngineManager(settings, on_ready=resolver.reload)
            engines.serve(bases)
            app.state.engines = engines
            app.state.serving = OpenAIServing(resolver, engines)
            engines.start()  # engines come up in the background; /health says when
            yield
        finally:
            if engines is not None:
                await engines.stop()
            await registry.close()

    app = FastAPI(title="tuneplex gateway", version=tuneplex_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    register_error_handlers(app)
    attach_routers(app)
    app.add_middleware(RequestMetrics)
    return app
