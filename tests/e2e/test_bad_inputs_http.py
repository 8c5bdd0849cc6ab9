"""The catalogue of bad input over HTTP: the gateway's OpenAI routes.

Every row is one mistake a client can make. Each must come back with its HTTP status, its
OpenAI error `type` (and the stable `code` where the product defines one), the field at fault
named (in `param`, or the message), and a message that shows neither a file-system path nor a
gRPC target.

Rows the edge refuses on its own (auth, body validation, routes) run on the gateway's app in
this process, with no engine: the same app, its lifespan not started. Rows that need the model
resolved (the registry) or the engine's own checks run against the session's shared gateway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from tests.e2e.conftest import BASE

pytestmark = pytest.mark.e2e

KEY = "test-key"  # what tests/helpers/gateway_process.py gives the shared gateway
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

INVALID = (400, "invalid_request_error")
NOT_FOUND = (404, "not_found_error")
UNAUTHENTICATED = (401, "authentication_error")

SERVER_PATH = re.compile(
    r"(?:/tmp/|/root\b|/home/|/work/|/usr/|/var/|/opt/|/proc/|\.tuneplex|site-packages"
    r"|pytest-of-|blobs/sha256/|Traceback|File \")"
)
GRPC_TARGET = re.compile(r"(?:ipv4:|ipv6:|127\.0\.0\.1:|localhost:|dns:|unix:)")


def say(content: Any = "hi", role: str = "user") -> list[dict]:
    return [{"role": role, "content": content}]


@dataclass(frozen=True)
class Case:
    what: str
    body: Any  # a dict is sent as JSON, bytes as they are
    expect: tuple[int, str]  # HTTP status, OpenAI error type
    field: str  # `param`, or words the message must contain
    path: str = CHAT
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: {"authorization": f"Bearer {KEY}"})
    code: str | None = None  # the stable error code, where the product defines one

    def __str__(self) -> str:
        return self.what


def chat(**fields: Any) -> dict:
    return {"model": BASE, "messages": say(), "max_tokens": 4, **fields}


def completion(**fields: Any) -> dict:
    return {"model": BASE, "prompt": "The capital of France is", "max_tokens": 4, **fields}


EDGE_CASES = [
    # auth
    Case("no Authorization header", chat(), UNAUTHENTICATED, "API key", headers={}),
    Case("wrong API key", chat(), UNAUTHENTICATED, "API key",
         headers={"authorization": "Bearer nope"}),
    Case("Basic instead of Bearer", chat(), UNAUTHENTICATED, "Bearer",
         headers={"authorization": f"Basic {KEY}"}),
    # the body itself
    Case("a body that is not JSON", b"{not json", INVALID, "JSON"),
    Case("a JSON array as the body", b"[1, 2]", INVALID, "body"),
    Case("no model", {"messages": say()}, INVALID, "model"),
    Case("an empty model", chat(model=""), INVALID, "model"),
    Case("a number as the model", chat(model=7), INVALID, "model"),
    Case("a 300-character model", chat(model="m" * 300), INVALID, "model"),
    Case("no messages", {"model": BASE}, INVALID, "messages"),
    Case("an empty messages list", chat(messages=[]), INVALID, "messages"),
    Case("messages as a string", chat(messages="hi"), INVALID, "messages"),
    Case("a message without a role", chat(messages=[{"content": "hi"}]), INVALID,
         "messages.0.role"),
    Case("an unknown role", chat(messages=say(role="wizard")), INVALID, "messages.0.role"),
    Case("content as a number", chat(messages=say(3)), INVALID, "messages.0.content"),
    # wrong types, where OpenAI is strict
    Case("max_tokens as a string", chat(max_tokens="10"), INVALID, "max_tokens"),
    Case("max_tokens as a float", chat(max_tokens=10.5), INVALID, "max_tokens"),
    Case("stream as a string", chat(stream="yes"), INVALID, "stream"),
    Case("temperature as a word", chat(temperature="hot"), INVALID, "temperature"),
    Case("n as a string", chat(n="2"), INVALID, "n"),
    Case("stop as a number", chat(stop=5), INVALID, "stop"),
    Case("seed as a word", chat(seed="x"), INVALID, "seed"),
    Case("include_usage as a word", chat(stream=True, stream_options={"include_usage": "maybe"}),
         INVALID, "stream_options.include_usage"),
    # out of range
    Case("negative max_tokens", chat(max_tokens=-1), INVALID, "max_tokens"),
    Case("max_tokens 0", chat(max_tokens=0), INVALID, "max_tokens"),
    Case("negative max_completion_tokens", chat(max_completion_tokens=-5), INVALID,
         "max_completion_tokens"),
    Case("temperature 9", chat(temperature=9), INVALID, "temperature"),
    Case("top_p 0", chat(top_p=0), INVALID, "top_p"),
    Case("n 0", chat(n=0), INVALID, "n"),
    Case("n 17", chat(n=17), INVALID, "n"),
    Case("presence_penalty 5", chat(presence_penalty=5), INVALID, "presence_penalty"),
    Case("frequency_penalty -3", chat(frequency_penalty=-3), INVALID, "frequency_penalty"),
    # completions
    Case("a completion without a prompt", {"model": BASE}, INVALID, "prompt", path=COMPLETIONS),
    Case("an empty prompt list", completion(prompt=[]), INVALID, "prompt", path=COMPLETIONS),
    Case("a prompt as a dict", completion(prompt={"text": "hi"}), INVALID, "prompt",
         path=COMPLETIONS),
    Case("completion max_tokens as a string", completion(max_tokens="10"), INVALID, "max_tokens",
         path=COMPLETIONS),
    Case("completion echo as a string", completion(echo="yes"), INVALID, "echo",
         path=COMPLETIONS),
    # routes
    Case("an engine route the gateway does not expose", {}, NOT_FOUND, "/v1/load_lora_adapter",
         path="/v1/load_lora_adapter"),
    Case("an unknown route", {}, NOT_FOUND, "/v1/nothing-here", path="/v1/nothing-here"),
    Case("GET on a POST route", None, (405, "invalid_request_error"), "GET", method="GET"),
]

SERVED_CASES = [
    Case("an unknown model", chat(model="no-such-model"), NOT_FOUND, "model",
         code="model_not_found"),
    Case("an unknown model, streamed", chat(model="no-such-model", stream=True), NOT_FOUND,
         "model", code="model_not_found"),
    Case("an unknown model for a completion", completion(model="no-such-model"), NOT_FOUND,
         "model", path=COMPLETIONS, code="model_not_found"),
    Case("a version in superscript digits", chat(model="sql-lora@\u00b2"), INVALID, "model"),
    Case("a version in Arabic-Indic digits", chat(model="sql-lora@\u0661"), INVALID, "model"),
    Case("a version past the stored integer", chat(model="sql-lora@99999999999999999999999"),
         INVALID, "model"),
    Case("version 0", chat(model="sql-lora@0"), INVALID, "model"),
    Case("an absent version", chat(model="sql-lora@9999"), NOT_FOUND, "model",
         code="model_not_found"),
    Case("an unknown alias", chat(model="sql-lora@nightly"), NOT_FOUND, "model",
         code="model_not_found"),
    Case("a base model version this gateway does not serve", chat(model=f"{BASE}@99"), NOT_FOUND,
         "model", code="model_not_found"),
    Case("retrieve of an unknown model", None, NOT_FOUND, "no-such-model", method="GET",
         path="/v1/models/no-such-model", code="model_not_found"),
    Case("a DoRA adapter vLLM cannot load", chat(model="bad-inputs-dora"), INVALID, "model",
         code="adapter_not_servable"),
    Case("a prompt longer than the context", chat(messages=say("word " * 2000)), INVALID,
         "context"),
    Case("top_k as a word (passed through to the engine)", chat(top_k="x"), INVALID, "top_k"),
    Case("logprobs out of range (the engine's check)", completion(logprobs=1000), INVALID,
         "logprobs", path=COMPLETIONS),
]


def send(client: httpx.Client | TestClient, case: Case) -> httpx.Response:
    if isinstance(case.body, bytes):
        headers = {"content-type": "application/json", **case.headers}
        return client.request(case.method, case.path, headers=headers, content=case.body)
    if case.body is None:
        return client.request(case.method, case.path, headers=case.headers)
    return client.request(case.method, case.path, headers=case.headers, json=case.body)


def assert_refused(case: Case, resp: httpx.Response, *leaks: str) -> None:
    status, kind = case.expect
    assert resp.status_code == status, f"{case}: {resp.status_code} {resp.text[:500]}"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, f"{case}: {error}"
    assert error["type"] == kind, f"{case}: {error}"
    if case.code is not None:
        assert error["code"] == case.code, f"{case}: {error}"
    message, param = error["message"] or "", error["param"] or ""
    assert param == case.field or case.field in message, (
        f"{case}: neither param {param!r} nor the message {message!r} names {case.field!r}"
    )
    # A Python location (`body.seed`) is not the name of a field the client sent.
    assert not param.startswith("body"), f"{case}: param {param!r}"
    for what in (message, param):
        assert not SERVER_PATH.search(what), f"{case}: a server path in {what!r}"
        assert not GRPC_TARGET.search(what), f"{case}: a gRPC target in {what!r}"
        for leak in leaks:
            assert leak not in what, f"{case}: {leak!r} in {what!r}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    # No `with`: the lifespan (registry, engines) does not run; only the edge answers.
    home = tmp_path_factory.mktemp("bad-inputs-gateway")
    client = TestClient(build_app(GatewaySettings(home=home, api_key=KEY)),
                        raise_server_exceptions=False)
    return client, str(home)


@pytest.fixture(scope="module")
def served(gateway, push_adapter, registry_with_base_model):
    push_adapter("bad-inputs-dora", seed=11, use_dora=True)
    with httpx.Client(base_url=gateway.url, timeout=120) as client:
        yield client, (str(gateway.home), registry_with_base_model.target)


@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
def test_the_edge_refuses_bad_input(case, edge):
    client, home = edge
    assert_refused(case, send(client, case), home)


@pytest.mark.parametrize("case", SERVED_CASES, ids=str)
def test_the_gateway_refuses_bad_input(case, served):
    client, leaks = served
    assert_refused(case, send(client, case), *leaks)
