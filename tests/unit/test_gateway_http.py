"""The HTTP edge without engines: auth, validation and the one OpenAI error shape; the
engine choice; upstream error mapping."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.gateway.app import build_app
from services.gateway.engine_errors import upstream_error
from services.gateway.engine_picker import pick_engine
from services.gateway.engines import Engine, EngineState
from services.gateway.served import ServedBase
from services.gateway.settings import GatewaySettings


@pytest.fixture
def http(tmp_path):
    # No `with`: the lifespan (registry, engines) does not run; the edge is what is tested.
    settings = GatewaySettings(home=tmp_path, api_key="k")
    return TestClient(build_app(settings), raise_server_exceptions=False)


AUTH = {"authorization": "Bearer k"}


def test_missing_or_wrong_key_is_401_in_openai_shape(http):
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic k"}):
        resp = http.post("/v1/chat/completions", json={}, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
     "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages.0.content.str"),
])
def test_invalid_bodies_are_400_naming_the_field(http, body, param):
    resp = http.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_unknown_route_is_404_in_openai_shape(http):
    resp = http.post("/v1/load_lora_adapter", json={}, headers=AUTH)
    assert resp.status_code == 404
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_openapi_schema_documents_the_requests(http):
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(paths)


def _engine(engine_id: str, state=EngineState.READY, load=0):
    settings = GatewaySettings()
    engine = Engine(engine_id, settings, ServedBase("m", settings.home), "http://x")
    engine.state, engine.in_flight = state, load
    return engine


def test_routing_prefers_the_engine_with_the_adapter_then_the_least_loaded():
    a, b = _engine("a", load=5), _engine("b", load=1)
    resident = {"sql": {"a"}, "chat": set()}  # which engines have which adapter registered
    assert pick_engine([a, b], "m", resident["sql"]) is a
    assert pick_engine([a, b], "m", resident["chat"]) is b
    assert pick_engine([a, b], "m") is b
    a.waiting = 3  # the warm engine is queueing while the other one is not
    assert pick_engine([a, b], "m", resident["sql"]) is b


def test_no_ready_engine_is_unavailable():
    with pytest.raises(Unavailable):
        pick_engine([_engine("a", state=EngineState.DOWN)], "m")


def test_upstream_errors_keep_their_kind_and_message():
    err = upstream_error(400, b'{"error": {"message": "too long", "param": "input_tokens"}}')
    assert isinstance(err, InvalidArgument) and err.message == "too long"
    assert err.param == "input_tokens"
    assert isinstance(upstream_error(404, b"{}"), NotFound)
    assert isinstance(upstream_error(500, b"boom"), Unavailable)


def test_a_full_engine_queue_is_429():
    import asyncio

    from services.common.errors import ResourceExhausted

    async def scenario():
        settings = GatewaySettings(max_concurrent_per_engine=1, max_queue_per_engine=1)
        engine = Engine("e", settings, ServedBase("m", settings.home), "http://x")
        engine.state = EngineState.READY
        release = asyncio.Event()

        async def hold():
            async with engine.admit():
                await release.wait()

        first = asyncio.create_task(hold())
        await asyncio.sleep(0)
        queued = asyncio.create_task(hold())  # waits for the one slot: allowed
        await asyncio.sleep(0)
        assert (engine.in_flight, engine.waiting) == (1, 1)
        with pytest.raises(ResourceExhausted):
            async with engine.admit():
                pass
        release.set()
        await asyncio.gather(first, queued)
        assert (engine.in_flight, engine.waiting) == (0, 0)

    asyncio.run(scenario())


async def test_a_failed_request_marks_its_engine_down_until_health_says_otherwise(
    tmp_path, monkeypatch
):
    """The 503 a request got, /health and routing agree at once; a report that does not hold
    (the engine answers health) puts it back."""
    from services.gateway.engines import EngineManager

    class NoListener:
        async def engine_ready(self, engine):
            return None

    settings = GatewaySettings(home=tmp_path, engine_urls=["http://127.0.0.1:9"],
                               engine_health_interval_s=0.01)
    manager = EngineManager(settings, NoListener())
    manager.serve([])
    [engine] = manager.engines
    engine.state = EngineState.READY
    manager.report_failure(engine)
    assert engine.state == EngineState.DOWN and engine.check_now.is_set()

    answers, states = iter([True, False, False, False]), []

    async def healthy():
        states.append(engine.state)
        return next(answers)

    monkeypatch.setattr(engine, "healthy", healthy)
    await asyncio.wait_for(manager._watch(engine), 5)  # returns once health keeps failing
    assert states[:2] == [EngineState.DOWN, EngineState.READY]
