"""The gateway's edge against a real engine and registry: the engine reachable by the gateway
alone, strict version references, a default cap on generated tokens, `models.retrieve`, and
the engine's refusals in our words."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.e2e.conftest import BASE, DEFAULT_MAX_TOKENS

pytestmark = pytest.mark.e2e


def _headers(gateway) -> dict[str, str]:
    return {"authorization": f"Bearer {gateway.api_key}"}


def test_the_engine_is_reachable_only_through_the_gateways_private_socket(gateway):
    [pid] = gateway.engine_pids()
    engine = psutil.Process(pid)
    cmdline = engine.cmdline()
    assert "--port" not in cmdline and "--api-key" not in " ".join(cmdline)
    listening = [c for c in engine.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening == []  # no TCP port at all: nothing on the machine can dial it
    sock = Path(cmdline[cmdline.index("--uds") + 1])
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.parent.stat().st_mode) & 0o077 == 0  # only the gateway's user
    # Even through the socket, vLLM's own routes want the key only the gateway holds.
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://engine",
                      timeout=30) as direct:
        load = direct.post("/v1/load_lora_adapter",
                           json={"lora_name": "sneaky", "lora_path": str(gateway.cache_dir)})
        assert load.status_code == 401
        assert direct.get("/v1/models").status_code == 401  # it would list cache paths
        assert direct.get("/health").status_code == 200


def test_the_engine_key_is_not_in_any_process_command_line(gateway):
    [pid] = gateway.engine_pids()
    key = psutil.Process(pid).environ().get("VLLM_API_KEY")
    assert key and len(key) >= 32
    for proc in psutil.process_iter(["cmdline"]):
        assert key not in " ".join(proc.info["cmdline"] or ())


@pytest.mark.parametrize("model", [
    "sql-lora@99999999999999999999999",
    "sql-lora@\u00b2",
    "sql-lora@\u0661",  # int() reads it as 1: it must not answer as sql-lora@1
])
def test_version_references_are_ascii_digits_within_range(openai_client, model):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert info.value.body["param"] == "model"
    assert "version" in info.value.body["message"]


@pytest.mark.parametrize("max_tokens", ["absent", None])
def test_a_request_without_max_tokens_is_capped_by_the_default(gateway, max_tokens):
    body = {"model": BASE, "prompt": "Once upon a time", "ignore_eos": True, "temperature": 0}
    if max_tokens != "absent":
        body["max_tokens"] = max_tokens
    resp = httpx.post(f"{gateway.url}/v1/completions", json=body, headers=_headers(gateway),
                      timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS


def test_retrieve_agrees_with_the_list(openai_client):
    listed = openai_client.models.list().data
    assert {"sql-lora", BASE} <= {m.id for m in listed}
    for card in listed:
        assert openai_client.models.retrieve(card.id) == card
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("no-such-model")


def test_an_engine_validation_error_reads_as_ours(gateway):
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "top_k": "many"}  # not checked by the gateway: passed to vLLM, which refuses it
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=body,
                      headers=_headers(gateway), timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "top_k"
    assert error["message"].startswith("top_k: ")
    assert "{" not in error["message"] and "body." not in resp.text


def test_a_bad_token_id_reads_as_ours(gateway):
    body = {"model": BASE, "prompt": [-1], "max_tokens": 2}
    resp = httpx.post(f"{gateway.url}/v1/completions", json=body, headers=_headers(gateway),
                      timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "prompt.0"
    for raw in ("{", "validation error", "body.", "Traceback", "<path>"):
        assert raw not in error["message"]
