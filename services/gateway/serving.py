"""The logic behind /v1/chat/completions and /v1/completions: resolve `model`, pick an engine,
make sure the adapter is loaded there, rewrite `model` to vLLM's internal id and proxy the
request, streaming SSE through untouched except for `model` and the usage chunk we asked for.

Client disconnects abort the upstream request (vLLM stops generating when its connection
closes), so an abandoned request does not keep burning engine time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TuneplexError,
    Unavailable,
)
from services.gateway import metrics
from services.gateway.adapters import AdapterResolver
from services.gateway.engines import Engine, EngineManager
from services.gateway.models import ResolvedModel
from services.gateway.protocol import ModelCard, ModelList
from services.gateway.router import pick_engine

log = logging.getLogger(__name__)

_CLIENT_CLOSED = 499


def upstream_error(status: int, content: bytes) -> TuneplexError:
    """vLLM's error for a request, re-raised as ours: its 400s (context too long, bad sampling
    parameters) are the user's to fix and keep their message; its 5xx mean the engine is sick."""
    try:
        err = json.loads(content)["error"]
        message, param = str(err.get("message") or ""), err.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, param = content[:500].decode(errors="replace"), None
    param = param if isinstance(param, str) else None
    if status == 404:
        return NotFound(message or "not found", param=param)
    if status == 429:
        return ResourceExhausted(message or "engine overloaded")
    if status >= 500:
        return Unavailable(f"engine error: {message}" if message else "engine error")
    return InvalidArgument(message or f"engine refused the request ({status})", param=param)


class OpenAIServing:
    def __init__(self, resolver: AdapterResolver, engines: EngineManager):
        self._resolver = resolver
        self._engines = engines

    async def list_models(self) -> ModelList:
        now = int(time.time())
        cards = [ModelCard(id=b.name, created=now, root=b.ref)
                 for b in self._resolver.bases.values()]
        try:
            adapters = await self._resolver.servable_adapters()
        except Unavailable as exc:
            log.warning("registry unavailable, listing base models only: %s", exc)
            adapters = []
        for artifact, base in adapters:
            cards.append(ModelCard(
                id=artifact.name, created=artifact.create_time.seconds or now, parent=base.name,
                root=f"{artifact.name}@{artifact.latest.version}"))
        return ModelList(data=cards)

    async def create(self, route: str, path: str, body: dict[str, Any], raw: Request) -> Response:
        """Serve one chat or completion request. `body` is the validated request as a dict."""
        start = time.perf_counter()
        resolved = await self._resolver.resolve(body["model"])
        body["model"] = resolved.upstream_name
        strip_usage = False
        if body.get("stream"):
            # Ask for usage so token metrics are exact; drop that chunk if the client did not.
            options = dict(body.get("stream_options") or {})
            if not options.get("include_usage"):
                body["stream_options"] = {**options, "include_usage": True}
                strip_usage = True
        engines = self._engines.for_base(resolved.base.name)
        lora_id = resolved.adapter.lora_id if resolved.adapter else None
        engine = pick_engine(engines, lora_id, resolved.base.name)
        payload = json.dumps(body).encode()

        if not body.get("stream"):
            async with engine.admit():
                resp = await _cancel_on_disconnect(self._send(engine, path, payload, resolved), raw)
                if resp is None:
                    return Response(status_code=_CLIENT_CLOSED)
                data = json.loads(resp)
            data["model"] = resolved.public_name
            _count_usage(data.get("usage"))
            metrics.TIME_TO_FIRST_TOKEN.labels(route=route).observe(time.perf_counter() - start)
            return JSONResponse(data)

        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(engine.admit())
        try:
            upstream = await self._open(engine, path, payload, resolved)
        except BaseException:
            await stack.aclose()
            raise
        stack.push_async_callback(upstream.aclose)
        events = self._relay(engine, upstream, resolved, strip_usage, route, start, stack)
        # The background close covers a client that leaves before the first event, when the
        # generator never runs and so never reaches its own cleanup.
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"},
                                 background=BackgroundTask(stack.aclose))

    async def _send(self, engine: Engine, path: str, payload: bytes,
                    resolved: ResolvedModel) -> bytes:
        upstream = await self._open(engine, path, payload, resolved)
        try:
            return await upstream.aread()
        except httpx.HTTPError as exc:
            raise self._lost(engine, exc) from exc
        finally:
            await upstream.aclose()

    async def _open(self, engine: Engine, path: str, payload: bytes,
                    resolved: ResolvedModel) -> httpx.Response:
        """Start the upstream request; return it once vLLM answered 200 with headers."""
        for attempt in range(2):
            if resolved.adapter is not None:
                await self._resolver.ensure_loaded(engine, resolved.adapter)
            assert engine.client is not None
            request = engine.client.build_request(
                "POST", path, content=payload, headers={"content-type": "application/json"})
            try:
                upstream = await engine.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise self._lost(engine, exc) from exc
            if upstream.status_code == 200:
                return upstream
            content = await upstream.aread()
            await upstream.aclose()
            if upstream.status_code == 404 and resolved.adapter is not None and attempt == 0:
                # The engine lost the adapter (restarted behind our back): load it again.
                self._resolver.forget(engine, resolved.adapter)
                continue
            if upstream.status_code >= 500:
                self._engines.report_failure(engine)
            raise upstream_error(upstream.status_code, content)
        raise Unavailable("engine keeps losing the adapter; retry")

    def _lost(self, engine: Engine, exc: httpx.HTTPError) -> TuneplexError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return DeadlineExceeded("the engine did not answer within the request timeout")
        self._engines.report_failure(engine)
        return Unavailable(f"engine {engine.id} is unreachable; retry shortly")

    async def _relay(self, engine: Engine, upstream: httpx.Response, resolved: ResolvedModel,
                     strip_usage: bool, route: str, start: float,
                     stack: contextlib.AsyncExitStack) -> AsyncIterator[bytes]:
        internal = f'"model":"{resolved.upstream_name}"'.encode()
        public = f'"model":{json.dumps(resolved.public_name)}'.encode()
        first, buffer = True, b""
        try:
            async for chunk in upstream.aiter_raw():
                buffer += chunk
                while (end := buffer.find(b"\n\n")) >= 0:
                    event, buffer = buffer[: end + 2], buffer[end + 2 :]
                    if b'"usage":{' in event:
                        _count_usage_event(event)
                        if strip_usage and b'"choices":[]' in event:
                            continue
                    if first:
                        first = False
                        metrics.TIME_TO_FIRST_TOKEN.labels(route=route).observe(
                            time.perf_counter() - start)
                    yield event.replace(internal, public)
            if buffer.strip():
                yield buffer
        except httpx.HTTPError as exc:
            # Headers are sent already: the error can only travel as a last SSE event.
            err = self._lost(engine, exc)
            yield f"data: {json.dumps(err.to_openai())}\n\n".encode()
        finally:
            await stack.aclose()


def _count_usage(usage: Any) -> None:
    if isinstance(usage, dict):
        metrics.PROMPT_TOKENS.inc(usage.get("prompt_tokens") or 0)
        metrics.COMPLETION_TOKENS.inc(usage.get("completion_tokens") or 0)


def _count_usage_event(event: bytes) -> None:
    try:
        _count_usage(json.loads(event.removeprefix(b"data: ")).get("usage"))
    except (ValueError, AttributeError):
        pass


async def _cancel_on_disconnect(work: Any, raw: Request) -> Any:
    """Run `work`, cancelling it if the client goes away first (then return None). The body is
    already read, so the next ASGI message can only be the disconnect."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(raw))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TuneplexError):
        await task
    log.info("client disconnected; upstream request aborted")
    return None


async def _disconnected(raw: Request) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass
