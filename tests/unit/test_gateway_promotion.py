"""The gateway's side of a promotion over HTTP, engines being strict fakes of vLLM
(tests/helpers/fake_vllm.py) and the registry the in-memory stand-in of the residency tests:
warm loads a version only where the one it replaces is loaded and is not counted as traffic,
refresh makes the next request serve a moved alias, every completion says which version served
it, and bad promotion bodies are OpenAI-shaped 400/404/503s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.gateway import metrics
from services.gateway.app import build_app
from services.gateway.cache import VerifiedDiskCache
from services.gateway.engines import Engine, EngineManager, EngineState
from services.gateway.promotion import PromotionSupport
from services.gateway.residency import AdapterResidency
from services.gateway.resolver import ModelResolver
from services.gateway.served import ServedBase
from services.gateway.serving import VERSION_HEADER, OpenAIServing
from services.gateway.settings import GatewaySettings
from tests.helpers.fake_vllm import FakeVLLM
from tests.unit.test_gateway_residency import AdapterRegistry

# Pulled from the registry as version 1, as the served base is in production.
BASE = ServedBase("smollm2", Path("/models/smollm2"), 1)
AUTH = {"authorization": "Bearer k"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class Gateway:
    """The real app, routers and services, in front of two fake engines of one base."""

    def __init__(self, tmp_path: Path, capacity: int = 3, resolve_ttl_s: float = 0.0):
        self.settings = GatewaySettings(
            home=tmp_path, api_key="k", max_loras=capacity, resolve_ttl_s=resolve_ttl_s,
            engine_urls=["http://engine-0", "http://engine-1"])
        self.registry = AdapterRegistry()
        cache = VerifiedDiskCache(tmp_path / "cache", 10**6)
        self.resolver = ModelResolver(self.settings, self.registry, cache)
        self.resolver.bases = {BASE.name: BASE}
        self.residency = AdapterResidency(self.settings, self.registry, cache)
        self.vllms = [FakeVLLM(BASE.name), FakeVLLM(BASE.name)]
        self.manager = EngineManager(self.settings, self.residency)
        for i, vllm in enumerate(self.vllms):
            engine = Engine(f"engine-{i}", self.settings, BASE, f"http://engine-{i}")
            engine.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=vllm.app),
                                              base_url=f"http://engine-{i}")
            engine.state = EngineState.READY
            self.manager.engines.append(engine)
        # The lifespan (real registry, vLLM processes) does not run; its products are set here.
        app = build_app(self.settings)
        app.state.engines = self.manager
        app.state.serving = OpenAIServing(self.resolver, self.residency, self.manager,
                                          default_max_tokens=16)
        app.state.promotion = PromotionSupport(self.resolver, self.residency, self.manager)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                      base_url="http://gateway", headers=AUTH)

    def alias(self, name: str, alias: str, version: int) -> None:
        self.registry.versions[f"{name}@{alias}"] = self.registry.versions[f"{name}@{version}"]

    async def chat(self, model: str, **extra: Any) -> httpx.Response:
        resp = await self.http.post("/v1/chat/completions", json={"model": model, **CHAT, **extra})
        assert resp.status_code == 200, resp.text
        return resp

    async def warm(self, model: str, replaces: str) -> httpx.Response:
        return await self.http.post("/tuneplex/v1/warm",
                                    json={"model": model, "replaces": replaces})

    def resident(self, engine: int = 0) -> list[str]:
        return [a.ref for a in self.residency.resident(self.manager.engines[engine])]

    async def close(self) -> None:
        await self.http.aclose()
        for engine in self.manager.engines:
            assert engine.client is not None
            await engine.client.aclose()


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = Gateway(tmp_path)
    yield gateway
    await gateway.close()


def _warmed() -> float:
    return float(metrics.ADAPTER_LOADS.labels(result="warmed")._value.get())


async def test_warm_loads_the_candidate_only_on_the_engine_holding_the_replaced_version(gw):
    v1, v2 = gw.registry.add("sql", 1), gw.registry.add("sql", 2)
    gw.alias("sql", "prod", 1)
    assert (await gw.chat("sql@prod")).headers[VERSION_HEADER] == "sql@1"
    assert gw.vllms[0].loaded == [v1.lora_id]  # the first of two idle engines took it
    warmed = _warmed()

    resp = await gw.warm("sql@2", "sql@prod")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model"], body["loaded_on"], body["already_on"]) == ("sql@2", ["engine-0"], [])
    assert gw.vllms[0].loaded == [v1.lora_id, v2.lora_id]
    assert gw.vllms[1].load_calls == []  # it never had sql@1: nothing to replace there
    assert gw.registry.pulls == 2
    assert _warmed() == warmed + 1

    # The first request for v2 goes to the engine that has it, and loads nothing.
    assert (await gw.chat("sql@2")).headers[VERSION_HEADER] == "sql@2"
    assert gw.vllms[0].load_calls == [v1.lora_id, v2.lora_id]
    assert gw.vllms[1].load_calls == []

    again = (await gw.warm("sql@2", "sql@prod")).json()
    assert (again["loaded_on"], again["already_on"]) == ([], ["engine-0"])
    assert _warmed() == warmed + 1


async def test_warm_where_no_engine_holds_the_replaced_version_loads_nothing_and_says_so(gw):
    gw.registry.add("sql", 1), gw.registry.add("sql", 2)
    gw.alias("sql", "prod", 1)
    resp = await gw.warm("sql@2", "sql@prod")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["loaded_on"], body["already_on"]) == ([], [])
    assert "nothing warmed" in body["message"] and "sql@1" in body["message"]
    assert [v.load_calls for v in gw.vllms] == [[], []]
    assert gw.registry.pulls == 0


async def test_warm_spares_the_replaced_version_and_is_not_counted_as_traffic(tmp_path):
    gw = Gateway(tmp_path, capacity=3)
    try:
        held, used, cand, later, last = (
            gw.registry.add(n) for n in ("held", "used", "cand", "later", "last"))
        engine = gw.manager.engines[0]
        for adapter in (held, used):
            await gw.residency.ensure_loaded(engine, adapter)
        assert await gw.residency.warm(engine, cand, replaces=held)
        # It takes the recency of what it replaces, not that of a request made now.
        assert gw.resident() == ["held@1", "cand@1", "used@1"]
        assert not await gw.residency.warm(engine, cand, replaces=held)
        assert gw.resident() == ["held@1", "cand@1", "used@1"]  # a second warm moves nothing

        await gw.residency.ensure_loaded(engine, later)  # over capacity: the oldest goes
        await gw.residency.ensure_loaded(engine, last)
        # The warmed version that got no traffic goes before the one that did.
        assert gw.vllms[0].unloaded == [held.lora_id, cand.lora_id]
        assert gw.resident() == ["used@1", "later@1", "last@1"]
    finally:
        await gw.close()


async def test_warm_making_room_never_unloads_the_version_still_serving(tmp_path):
    gw = Gateway(tmp_path, capacity=2)
    try:
        held, other, cand = (gw.registry.add(n) for n in ("held", "other", "cand"))
        engine = gw.manager.engines[0]
        for adapter in (held, other):  # `held` is the least recently used
            await gw.residency.ensure_loaded(engine, adapter)
        assert await gw.residency.warm(engine, cand, replaces=held)
        assert gw.vllms[0].unloaded == [other.lora_id]
        assert gw.resident() == ["held@1", "cand@1"]
    finally:
        await gw.close()


async def test_refresh_makes_the_next_request_serve_the_moved_alias(tmp_path):
    gw = Gateway(tmp_path, resolve_ttl_s=300)  # mutable refs cached: only a refresh helps
    try:
        gw.registry.add("sql", 1)
        gw.alias("sql", "prod", 1)
        assert (await gw.chat("sql@prod")).headers[VERSION_HEADER] == "sql@1"
        assert (await gw.chat("sql")).headers[VERSION_HEADER] == "sql@1"

        v2 = gw.registry.add("sql", 2)  # `sql` (latest) is v2 now, and the alias moves
        gw.alias("sql", "prod", 2)
        assert (await gw.chat("sql@prod")).headers[VERSION_HEADER] == "sql@1"  # cached

        resp = await gw.http.post("/tuneplex/v1/refresh", json={"model": "sql@prod"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"model": "sql@prod", "version": "sql@2"}
        reply = await gw.chat("sql@prod")
        assert reply.headers[VERSION_HEADER] == "sql@2" and reply.json()["model"] == "sql@2"
        # Every ref of the name was forgotten, not only the one refreshed.
        assert (await gw.chat("sql")).headers[VERSION_HEADER] == "sql@2"
        assert v2.lora_id in gw.vllms[0].loaded
    finally:
        await gw.close()


async def test_refresh_with_the_registry_down_is_a_503_and_keeps_serving_the_cached_answer(
        tmp_path):
    gw = Gateway(tmp_path, resolve_ttl_s=300)
    try:
        gw.registry.add("sql", 1)
        gw.alias("sql", "prod", 1)
        await gw.chat("sql@prod")
        gw.registry.down = True
        resp = await gw.http.post("/tuneplex/v1/refresh", json={"model": "sql@prod"})
        assert resp.status_code == 503
        assert resp.json()["error"]["type"] == "service_unavailable_error"
        assert resp.headers["x-should-retry"] == "true"
        assert (await gw.chat("sql@prod")).headers[VERSION_HEADER] == "sql@1"
    finally:
        await gw.close()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model, version", [("sql", "sql@1"), ("smollm2", "smollm2@1")])
async def test_every_completion_says_which_version_served_it(gw, path, stream, model, version):
    gw.registry.add("sql", 1)
    body: dict[str, Any] = {"model": model, "stream": stream, "max_tokens": 2}
    body |= {"messages": CHAT["messages"]} if "chat" in path else {"prompt": "hi"}
    resp = await gw.http.post(path, json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers[VERSION_HEADER] == version
    if stream:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert f'"model":"{model if model == BASE.name else version}"' in resp.text
    else:
        assert resp.json()["model"] == (BASE.name if model == BASE.name else version)


@pytest.mark.parametrize("path, body, status, param, code", [
    ("warm", {}, 400, "model", "invalid_request"),
    ("warm", {"model": "sql@2"}, 400, "replaces", "invalid_request"),
    ("warm", {"model": "sql@2", "replaces": "sql@1", "force": True}, 400, "force",
     "invalid_request"),
    ("warm", {"model": 2, "replaces": "sql@1"}, 400, "model", "invalid_request"),
    ("warm", {"model": "sql", "replaces": "sql@1"}, 400, "model", "version_not_pinned"),
    ("warm", {"model": "sql@prod", "replaces": "sql@1"}, 400, "model", "version_not_pinned"),
    ("warm", {"model": "smollm2", "replaces": "sql@1"}, 400, "model", "not_an_adapter"),
    ("warm", {"model": "sql@2", "replaces": "smollm2"}, 400, "replaces", "not_an_adapter"),
    ("warm", {"model": "sql@0", "replaces": "sql@1"}, 400, "model", "invalid_version"),
    ("warm", {"model": "nope@1", "replaces": "sql@1"}, 404, "model", "model_not_found"),
    ("warm", {"model": "sql@2", "replaces": "nope@prod"}, 404, "replaces", "model_not_found"),
    ("refresh", {}, 400, "model", "invalid_request"),
    ("refresh", {"model": "nope@prod"}, 404, "model", "model_not_found"),
])
async def test_bad_promotion_requests_are_openai_errors(gw, path, body, status, param, code):
    gw.registry.add("sql", 1), gw.registry.add("sql", 2)
    gw.alias("sql", "prod", 1)
    resp = await gw.http.post(f"/tuneplex/v1/{path}", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
    if code == "version_not_pinned":
        assert "sql@" in error["message"]  # the fix names the version it resolves to now
    assert [v.load_calls for v in gw.vllms] == [[], []]


async def test_promotion_routes_need_the_key_and_a_reachable_registry(gw):
    gw.registry.add("sql", 1), gw.registry.add("sql", 2)
    resp = await gw.http.post("/tuneplex/v1/warm", headers={"authorization": "Bearer no"},
                              json={"model": "sql@2", "replaces": "sql@1"})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    gw.registry.down = True
    resp = await gw.warm("sql@2", "sql@1")
    assert resp.status_code == 503
    assert resp.json()["error"]["type"] == "service_unavailable_error"
    assert resp.headers["retry-after"]

