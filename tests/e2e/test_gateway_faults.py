"""Faults the gateway must survive: a corrupted adapter cache, a crashed vLLM engine."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import httpx
import pytest

from tests.e2e.conftest import chat

pytestmark = pytest.mark.e2e


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupted_cached_adapter_is_detected_and_refetched(gateway, openai_client,
                                                             push_adapter):
    version = push_adapter("fresh-lora", seed=6)
    answer = chat(openai_client, "fresh-lora")
    weights = gateway.cache_dir / version.manifest.sha256 / "adapter_model.safetensors"
    expected = next(f.sha256 for f in version.manifest.files
                    if f.path == "adapter_model.safetensors")
    assert _sha256(weights) == expected

    with weights.open("r+b") as fh:  # flip bytes in the middle, size unchanged
        fh.seek(weights.stat().st_size // 2)
        fh.write(os.urandom(64))
    assert _sha256(weights) != expected

    # Three other adapters fill the engine (max_cpu_loras=3): fresh-lora is unloaded, so the
    # next request must load it from disk again.
    unloads = gateway.metric("gateway_adapter_unloads_total")
    push_adapter("filler-lora", seed=7)
    for name in ("sql-lora", "chat-lora", "filler-lora"):
        chat(openai_client, name)
    assert gateway.metric("gateway_adapter_unloads_total") > unloads
    corrupt = gateway.metric("gateway_adapter_cache_evictions_total", reason="corrupt")
    misses = gateway.metric("gateway_adapter_cache_misses_total")

    assert chat(openai_client, "fresh-lora") == answer
    assert gateway.metric("gateway_adapter_cache_evictions_total", reason="corrupt") == corrupt + 1
    assert gateway.metric("gateway_adapter_cache_misses_total") == misses + 1
    assert _sha256(weights) == expected


def test_killed_engine_gives_503_then_recovers_with_its_adapters(gateway, openai_client):
    before = chat(openai_client, "sql-lora")
    reloads = gateway.metric("gateway_adapter_loads_total", result="reloaded")
    restarts = gateway.metric("gateway_engine_restarts_total")
    [pid] = gateway.engine_pids()
    os.kill(pid, signal.SIGKILL)

    headers = {"authorization": f"Bearer {gateway.api_key}"}
    body = {"model": "sql-lora", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers,
                      timeout=60)
    assert resp.status_code == 503, resp.text
    assert resp.headers["x-should-retry"] == "true"
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.json()["error"]["type"] == "service_unavailable_error"
    assert httpx.get(f"{gateway.url}/health").status_code == 503

    deadline, said = time.monotonic() + 300, set()
    while (health := httpx.get(f"{gateway.url}/health")).status_code != 200:
        assert time.monotonic() < deadline, gateway.log()
        assert int(health.headers["retry-after"]) >= 1
        said.add(health.json()["status"])
        time.sleep(1)
    # While vLLM comes back up the gateway says so, rather than that it is down.
    assert "starting" in said, said
    assert gateway.metric("gateway_engine_restarts_total") == restarts + 1
    # The adapters were back before the engine took traffic again, not loaded on demand.
    assert gateway.metric("gateway_adapter_loads_total", result="reloaded") > reloads
    loads = gateway.metric("gateway_adapter_loads_total", result="loaded")
    assert chat(openai_client, "sql-lora") == before
    assert gateway.metric("gateway_adapter_loads_total", result="loaded") == loads
    assert gateway.engine_pids() != [pid]
