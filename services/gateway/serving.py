"""The logic behind /v1/chat/completions and /v1/completions: resolve `model` (resolver), pick
an engine (engine_picker), take one of its request slots (Engine.admit: the queue and the 429),
have residency make sure the adapter is loaded there, rewrite `model` to vLLM's internal id and
proxy the request, streaming SSE through untouched except for `model` and the usage chunk we
asked for.

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
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TuneplexError,
    Unavailable,
)
from services.gateway import metrics
from services.gateway.engine_errors import upstream_error
from services.gateway.engine_picker import pick_engine
from services.gateway.engines import Engine, EngineManager, Slot
from services.gateway.fine_tuning.names import OWNER_LABEL, is_fine_tuned
from services.gateway.on_demand import OnDemandModels
from services.gateway.protocol import ModelCard, ModelList
from services.gateway.residency import AdapterResidency
from services.gateway.resolver import ModelResolver, NeedsMerge, listed_name
from services.gateway.served import ResolvedModel

log = logging.getLogger(__name__)

_CLIENT_CLOSED = 499
# The immutable version that served a completion (`sql-lora@4`), in the headers of streams
# too: a client that asked for `sql-lora@prod` can tell which version answered before and
# after a promotion without reading the body.
VERSION_HEADER = "x-tuneplex-model-version"


def cap_max_tokens(body: dict[str, Any], default: int, context: int | None) -> None:
    """A request that gives no `max_tokens` (or null, or for chats no max_completion_tokens)
    gets `default`, cut to the engine's context: vLLM refuses a max_tokens above it, and
    itself cuts one that does not fit next to the prompt."""
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = min(default, context) if context else default


class OpenAIServing:
    def __init__(self, resolver: ModelResolver, residency: AdapterResidency,
                 engines: EngineManager, *, default_max_tokens: int,
                 on_demand: OnDemandModels | None = None):
        self._resolver = resolver
        self._residency = residency
        self._engines = engines
        self._default_max_tokens = default_max_tokens
        self._on_demand = on_demand  # None: models outside the served bases are refused
        # Base models are "created" when this gateway started serving them: a stable value,
        # so a listing and a retrieve agree.
        self._since = int(time.time())

    @property
    def serves_on_demand(self) -> bool:
        return self._on_demand is not None

    async def list_models(self, owner: str | None = None) -> ModelList:
        """Bases, and every adapter the registry has that these bases can serve (with `owner`:
        that `owner` may see; fine-tuned ones under their `ft:` name). During a registry
        outage only the bases, and `degraded` says why."""
        cards = [self._base_card(b) for b in self._resolver.bases.values()]
        try:
            adapters = await self._resolver.servable_adapters(owner)
        except Unavailable as exc:
            log.warning("registry unavailable, listing base models only: %s", exc)
            return ModelList(data=cards, degraded="the model registry is unavailable: only "
                             "base models are listed; retry shortly for the adapters")
        cards += [self._adapter_card(artifact, base) for artifact, base in adapters]
        return ModelList(data=cards)

    async def retrieve_model(self, model: str, owner: str | None = None) -> ModelCard:
        """`GET /v1/models/{model}`: the card the listing has for it; a ref that is not listed
        by name (`name@2`, `name@alias`) gets a card for what it resolves to."""
        base = self._resolver.bases.get(model)
        if base is not None:
            return self._base_card(base)
        try:
            resolved = await self._resolver.resolve(model, owner=owner)
        except FailedPrecondition as exc:  # found, but not served here: not in the listing
            raise NotFound(exc.message, param="model", code="model_not_found") from None
        if resolved.adapter is None:
            return self._base_card(resolved.base)
        for artifact, base in await self._resolver.servable_adapters(owner):
            if model in (artifact.name, listed_name(artifact)):
                return self._adapter_card(artifact, base)
        return ModelCard(id=model, created=self._since, parent=resolved.base.name,
                         root=resolved.adapter.ref)

    def _base_card(self, base: Any) -> ModelCard:
        return ModelCard(id=base.name, created=self._since, root=base.ref)

    def _adapter_card(self, artifact: Any, base: Any) -> ModelCard:
        return ModelCard(id=listed_name(artifact),
                         created=artifact.create_time.seconds or self._since,
                         owned_by=artifact.latest.labels.get(OWNER_LABEL, "tuneplex"),
                         parent=base.name, root=f"{artifact.name}@{artifact.latest.version}")

    async def create(self, route: str, path: str, body: dict[str, Any], raw: Request,
                     owner: str | None = None) -> Response:
        """Serve one chat or completion request. `body` is the validated request as a dict;
        `owner` the caller's (None: the gateway's own request, no owner to check)."""
        start = time.perf_counter()
        asked = body["model"]
        resolved, engines, public_name = await self._route(asked, owner)
        body["model"] = resolved.upstream_name
        strip_usage = False
        if body.get("stream"):
            # Ask for usage so token metrics are exact; drop that chunk if the client did not.
            options = dict(body.get("stream_options") or {})
            if not options.get("include_usage"):
                body["stream_options"] = {**options, "include_usage": True}
                strip_usage = True
        warm = self._residency.engines_with(resolved.adapter.lora_id) if resolved.adapter else ()
        engine = pick_engine(engines, resolved.base.name, warm)
        cap_max_tokens(body, self._default_max_tokens, engine.max_model_len)
        payload = json.dumps(body).encode()

        if not body.get("stream"):
            async with engine.admit() as slot:
                resp = await _cancel_on_disconnect(self._send(engine, path, payload, resolved), raw)
                if resp is None:
                    return Response(status_code=_CLIENT_CLOSED)
                data = json.loads(resp)
                slot.served = True
            data["model"] = public_name
            _count_usage(data.get("usage"))
            metrics.TIME_TO_FIRST_TOKEN.labels(route=route).observe(time.perf_counter() - start)
            return JSONResponse(data, headers={VERSION_HEADER: resolved.version_ref})

        stack = contextlib.AsyncExitStack()
        slot = await stack.enter_async_context(engine.admit())
        try:
            upstream = await self._open(engine, path, payload, resolved)
        except BaseException:
            await stack.aclose()
            raise
        stack.push_async_callback(upstream.aclose)
        events = self._relay(engine, upstream, resolved, public_name, strip_usage, route, start,
                             stack, slot)
        # The background close covers a client that leaves before the first event, when the
        # generator never runs and so never reaches its own cleanup.
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache",
                                          VERSION_HEADER: resolved.version_ref},
                                 background=BackgroundTask(stack.aclose))

    async def _route(self, asked: str, owner: str | None
                     ) -> tuple[ResolvedModel, list[Engine], str]:
        """What answers `asked`: the resolved model, the engines that serve it, and the name
        the response gives it. A model the served bases do not cover goes to an on-demand
        engine when those are on: a registry model by its name, an adapter vLLM cannot load
        at runtime through its merged model."""
        try:
            resolved = await self._resolver.resolve(asked, owner=owner)
        except NeedsMerge as needs:
            if self._on_demand is None:
                raise
            deadline = self._on_demand.deadline()
            base = await self._on_demand.merged(needs, deadline)
            engines = await self._on_demand.engines(base, deadline, "merged adapter")
            # Answered under the adapter's exact version, as a runtime-loaded adapter is.
            return ResolvedModel(base), engines, asked if is_fine_tuned(asked) else needs.ref
        except NotFound as unknown:
            if self._on_demand is None:
                raise
            deadline = self._on_demand.deadline()
            try:
                base = await self._on_demand.model(asked, owner)
            except (NotFound, InvalidArgument):
                raise unknown from None
            if self._on_demand.is_configured(base):  # an alias of a served base
                return ResolvedModel(base), self._engines.for_base(base.name), base.name
            engines = await self._on_demand.engines(base, deadline, "registry model")
            return ResolvedModel(base), engines, base.name
        # A fine-tuned model is answered under the name the caller wrote, as OpenAI does.
        public_name = asked if is_fine_tuned(asked) else resolved.public_name
        return resolved, self._engines.for_base(resolved.base.name), public_name

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
            async with contextlib.AsyncExitStack() as loaded:
                if resolved.adapter is not None:
                    await loaded.enter_async_context(
                        self._residency.loaded(engine, resolved.adapter))
                client = engine.http()
                request = client.build_request(
                    "POST", path, content=payload, headers={"content-type": "application/json"})
                try:
                    upstream = await client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise self._lost(engine, exc) from exc
            if upstream.status_code == 200:
                return upstream
            content = await upstream.aread()
            await upstream.aclose()
            if upstream.status_code == 404 and resolved.adapter is not None and attempt == 0:
                # The engine lost the adapter (restarted behind our back): load it again.
                self._residency.forget(engine, resolved.adapter)
                continue
            if upstream.status_code >= 500:
                self._engines.report_failure(engine)
            raise upstream_error(upstream.status_code, content, resolved.upstream_name,
                                 resolved.public_name)
        raise Unavailable("engine keeps losing the adapter; retry")

    def _lost(self, engine: Engine, exc: httpx.HTTPError) -> TuneplexError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return DeadlineExceeded("the engine did not answer within the request timeout")
        self._engines.report_failure(engine)
        log.warning("engine %s unreachable: %s", engine.id, exc)
        return Unavailable("the model's engine is unreachable; retry shortly")

    async def _relay(self, engine: Engine, upstream: httpx.Response, resolved: ResolvedModel,
                     public_name: str, strip_usage: bool, route: str, start: float,
                     stack: contextlib.AsyncExitStack, slot: Slot) -> AsyncIterator[bytes]:
        internal = f'"model":"{resolved.upstream_name}"'.encode()
        public = f'"model":{json.dumps(public_name)}'.encode()
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
            slot.served = True
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
