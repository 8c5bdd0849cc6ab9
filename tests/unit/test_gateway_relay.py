"""What a client receives when the gateway relays an engine's answer (serving.py `_relay` and the
non-streamed path), vLLM's generation routes being an `httpx.MockTransport` that answers as
vLLM 0.32 does (compact JSON chunks naming the adapter by its internal id, the usage chunk with
`"choices":[]` when asked for usage, `data: [DONE]`), cut into arbitrary byte pieces as a socket
delivers them. The adapter routes are the strict fake of tests/helpers/fake_vllm.py, the app is
the real one; nothing of vLLM is started."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.gateway import metrics
from services.gateway.app import build_app
from services.gateway.cache import VerifiedDiskCache
from services.gateway.engines import Engine, EngineManager, EngineState
from services.gateway.residency import AdapterResidency
from services.gateway.resolver import ModelResolver
from services.gateway.served import ServedBase
from services.gateway.serving import VERSION_HEADER, OpenAIServing
from services.gateway.settings import GatewaySettings
from tests.helpers.fake_vllm import FakeVLLM
from tests.unit.test_gateway_residency import AdapterRegistry

BASE = ServedBase("smollm2", Path("/models/smollm2"), 1)
AUTH = {"authorization": "Bearer k"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
WORDS = ["SELECT", " COUNT(*)", " FROM customers"]
GENERATION = ("/v1/chat/completions", "/v1/completions")

Answer = Callable[[dict[str, Any]], httpx.Response]


def compact(event: dict[str, Any]) -> str:
    """JSON as vLLM writes it (pydantic's `model_dump_json`: no spaces)."""
    return json.dumps(event, separators=(",", ":"))


def vllm_stream(body: dict[str, Any]) -> str:
    """The SSE text vLLM sends for a streamed chat: a role chunk, a chunk per word, a finish
    chunk, the usage chunk when asked for it, then [DONE]."""
    head = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": body["model"],
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word}) for word in WORDS]
    events.append(chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**head, "choices": [], "usage": USAGE})
    return "".join(f"data: {compact(e)}\n\n" for e in events) + "data: [DONE]\n\n"


async def in_pieces(text: str, size: int = 7) -> AsyncIterator[bytes]:
    """`text` as a socket may deliver it: events split across reads, several in one read."""
    data = text.encode()
    for i in range(0, len(data), size):
        yield data[i : i + size]


def vllm_answer(body: dict[str, Any]) -> httpx.Response:
    if body.get("stream"):
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=in_pieces(vllm_stream(body))
        )
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-9",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": "".join(WORDS)},
                }
            ],
            "usage": USAGE,
        },
    )


class EngineRoutes(httpx.AsyncBaseTransport):
    """One engine: its generation routes answered by `generation`, the rest (adapter loads,
    /v1/models, /health) by the strict fake vLLM app."""

    def __init__(self, generation: httpx.MockTransport, adapter_app: Any):
        self.generation = generation
        self.adapter_routes = httpx.ASGITransport(app=adapter_app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path in GENERATION:
            return await self.generation.handle_async_request(request)
        return await self.adapter_routes.handle_async_request(request)


class Gateway:
    """The real app in front of one engine whose generation routes `answer` decides."""

    def __init__(self, tmp_path: Path, answer: Answer = vllm_answer):
        self.settings = GatewaySettings(home=tmp_path, api_key="k", engine_urls=["http://engine-0"])
        self.registry = AdapterRegistry()
        self.registry.add("sql-lora", 1)
        self.adapter = self.registry.add("sql-lora", 2)  # what `sql-lora` names
        cache = VerifiedDiskCache(tmp_path / "cache", 10**6)
        resolver = ModelResolver(self.settings, self.registry, cache)
        resolver.bases = {BASE.name: BASE}
        residency = AdapterResidency(self.settings, self.registry, cache)
        self.sent: list[dict[str, Any]] = []  # generation requests as the engine got them

        def generate(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            self.sent.append(body)
            return answer(body)

        self.manager = EngineManager(self.settings, residency)
        engine = Engine("engine-0", self.settings, BASE, "http://engine-0")
        # The client an engine's start opens (Engine._open_client), over these transports.
        engine.client = httpx.AsyncClient(
            transport=EngineRoutes(httpx.MockTransport(generate), FakeVLLM(BASE.name).app),
            base_url="http://engine-0",
        )
        engine.state = EngineState.READY
        self.manager.engines.append(engine)
        app = build_app(self.settings)
        app.state.engines = self.manager
        app.state.serving = OpenAIServing(resolver, residency, self.manager, default_max_tokens=16)
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", headers=AUTH
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        for engine in self.manager.engines:
            assert engine.client is not None
            await engine.client.aclose()

    async def stream(self, model: str, **extra: Any) -> tuple[httpx.Response, list[str]]:
        """The response and its SSE `data:` payloads, in order."""
        body = {"model": model, **CHAT, "stream": True, **extra}
        resp = await self.http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.text.endswith("\n\n")
        events = [e for e in resp.text.split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events), events
        return resp, [e.removeprefix("data: ") for e in events]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = Gateway(tmp_path)
    yield gateway
    await gateway.aclose()


def _tokens() -> tuple[float, float]:
    return metrics.PROMPT_TOKENS._value.get(), metrics.COMPLETION_TOKENS._value.get()


async def test_a_stream_names_the_public_version_and_drops_the_usage_nobody_asked_for(gw):
    before = _tokens()
    resp, payloads = await gw.stream("sql-lora")
    internal = gw.adapter.lora_id
    # The engine got its internal id and was asked for usage (the gateway counts tokens).
    assert gw.sent[0]["model"] == internal
    assert gw.sent[0]["stream_options"] == {"include_usage": True}
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert [c["model"] for c in chunks] == ["sql-lora@2"] * len(chunks)
    assert internal not in resp.text
    assert not any("usage" in c for c in chunks)  # the client did not ask for it
    assert all(c["choices"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "".join(WORDS)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert resp.headers[VERSION_HEADER] == "sql-lora@2"
    assert resp.headers["content-type"].startswith("text/event-stream")
    prompt, completion = _tokens()
    assert (prompt - before[0], completion - before[1]) == (5, 3)  # counted though dropped


async def test_a_stream_keeps_the_usage_chunk_when_the_client_asked_for_it(gw):
    options = {"include_usage": True}
    _, payloads = await gw.stream("sql-lora@2", stream_options=options)
    assert gw.sent[0]["stream_options"] == options
    assert payloads[-1] == "[DONE]"
    usage = json.loads(payloads[-2])
    assert usage["choices"] == [] and usage["usage"] == USAGE
    assert usage["model"] == "sql-lora@2"


async def test_a_base_model_stream_passes_through_under_its_name(gw):
    _, payloads = await gw.stream(BASE.name)
    assert gw.sent[0]["model"] == BASE.name
    assert {json.loads(p)["model"] for p in payloads[:-1]} == {BASE.name}
    assert payloads[-1] == "[DONE]"


async def test_a_whole_answer_names_the_public_version(gw):
    before = _tokens()
    resp = await gw.http.post("/v1/chat/completions", json={"model": "sql-lora", **CHAT})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert gw.sent[0]["model"] == gw.adapter.lora_id and "stream_options" not in gw.sent[0]
    assert body["model"] == "sql-lora@2"
    assert body["usage"] == USAGE
    assert body["choices"][0]["message"]["content"] == "".join(WORDS)
    assert resp.headers[VERSION_HEADER] == "sql-lora@2"
    prompt, completion = _tokens()
    assert (prompt - before[0], completion - before[1]) == (5, 3)


def _refusal(status: int, message: str, param: str | None = None) -> Answer:
    def answer(body: dict[str, Any]) -> httpx.Response:
        error = {
            "message": message.format(model=body["model"]),
            "type": "BadRequestError",
            "param": param,
            "code": status,
        }
        return httpx.Response(status, json={"error": error})

    return answer


@pytest.mark.parametrize(
    "status, message, param, expected",
    [
        # The user's mistake keeps its meaning, under the name the user sent.
        (
            400,
            "This model's maximum context length is 8192 tokens ({model})",
            "body.messages",
            (400, "invalid_request_error", "messages"),
        ),
        (429, "busy", None, (429, "rate_limit_error", None)),
        # A sick engine: retry later, no details.
        (
            500,
            "CUDA error: an illegal memory access ({model})",
            None,
            (503, "service_unavailable_error", None),
        ),
    ],
)
async def test_an_engine_refusal_reaches_the_client_as_the_gateway_maps_it(
    tmp_path, status, message, param, expected
):
    for stream in (False, True):
        gw = Gateway(tmp_path / str(stream), _refusal(status, message, param))
        try:
            resp = await gw.http.post(
                "/v1/chat/completions", json={"model": "sql-lora", **CHAT, "stream": stream}
            )
        finally:
            await gw.aclose()
        error = resp.json()["error"]
        assert (resp.status_code, error["type"], error["param"]) == expected, error
        assert gw.adapter.lora_id not in resp.text
        if status == 400:
            assert "sql-lora@2" in error["message"]
        if status >= 500:
            assert "CUDA" not in error["message"] and resp.headers["x-should-retry"] == "true"


async def test_an_engine_lost_mid_stream_ends_the_stream_with_an_openai_error(tmp_path):
    async def cut_off(body: dict[str, Any]) -> AsyncIterator[bytes]:
        text = vllm_stream(body)
        yield text[: text.index("\n\n") + 2].encode()  # the first event, then the socket dies
        raise httpx.ReadError("connection reset by peer")

    gw = Gateway(tmp_path, lambda body: httpx.Response(200, content=cut_off(body)))
    try:
        _, payloads = await gw.stream("sql-lora")
    finally:
        await gw.aclose()
    assert json.loads(payloads[0])["model"] == "sql-lora@2"
    last = json.loads(payloads[-1])
    assert last["error"]["type"] == "service_unavailable_error"
    assert "[DONE]" not in payloads
