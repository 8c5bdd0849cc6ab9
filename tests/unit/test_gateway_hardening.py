"""The gateway in degraded states and at its edge, with its lifespan running and nothing
mocked: the registry client points at an address where no registry listens, the one engine is
attached at an address where no vLLM listens, the base model is a local folder.

What users must see then: our words (no gRPC target, no internal paths), `Retry-After` on every
503, `/v1/models` that says it is degraded rather than silently listing bases only, `GET
/v1/models/{id}`, and OpenAI's strict types at the edge."""

from __future__ import annotations

import json
import socket

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings

AUTH = {"authorization": "Bearer k"}
BASE = "tiny-base"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry_port() -> int:
    """Where the registry should be and is not."""
    return _dead_port()


@pytest.fixture
def degraded(tmp_path, registry_port):
    base = tmp_path / BASE
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    settings = GatewaySettings(
        home=tmp_path, api_key="k", registry_target=f"127.0.0.1:{registry_port}",
        registry_timeout_s=2,
        base_models=[str(base)], engine_urls=[f"http://127.0.0.1:{_dead_port()}"],
        engine_start_timeout_s=0.5)
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        yield client


def _no_internals(text: str, port: int) -> None:
    for leak in ("ipv4:", "127.0.0.1", str(port), "failed to connect", "/tmp/", "grpc"):
        assert leak not in text, text


def test_registry_outage_is_a_503_in_our_words_with_retry_after(degraded, registry_port):
    body = {"model": "sql-lora", "messages": [{"role": "user", "content": "hi"}]}
    resp = degraded.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 503, resp.text
    assert resp.headers["x-should-retry"] == "true"
    assert int(resp.headers["retry-after"]) >= 1
    error = resp.json()["error"]
    assert error["type"] == "service_unavailable_error"
    assert "registry" in error["message"]
    _no_internals(resp.text, registry_port)


def test_models_during_a_registry_outage_says_it_is_degraded(degraded, registry_port):
    resp = degraded.get("/v1/models", headers=AUTH)
    assert resp.status_code == 200
    assert resp.headers["x-tuneplex-degraded"] == "registry-unavailable"
    listing = resp.json()
    assert [m["id"] for m in listing["data"]] == [BASE]
    assert "registry" in listing["degraded"]
    _no_internals(resp.text, registry_port)


def test_retrieve_a_model_agrees_with_the_list(degraded):
    listed = {m["id"]: m for m in degraded.get("/v1/models", headers=AUTH).json()["data"]}
    resp = degraded.get(f"/v1/models/{BASE}", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json() == listed[BASE]
    # An adapter cannot be looked up while the registry is out: retry, not "no such model".
    missing = degraded.get("/v1/models/sql-lora", headers=AUTH)
    assert missing.status_code == 503 and missing.headers["retry-after"]
    assert degraded.get(f"/v1/models/{BASE}").status_code == 401


def test_no_ready_engine_is_a_503_with_retry_after_and_no_address(degraded):
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    resp = degraded.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 503, resp.text
    assert resp.headers["x-should-retry"] == "true" and int(resp.headers["retry-after"]) >= 1
    assert "http://" not in resp.text


def test_health_of_an_engine_that_never_answered(degraded):
    resp = degraded.get("/health")
    assert resp.status_code == 503
    assert resp.json()["status"] in ("starting", "down")
    assert int(resp.headers["retry-after"]) >= 1


@pytest.mark.parametrize("field, value", [
    ("max_tokens", "10"),
    ("max_tokens", 10.5),
    ("max_tokens", True),
    ("stream", "yes"),
    ("stream", 1),
    ("temperature", "0.5"),
    ("n", "2"),
    ("model", 7),
])
def test_strict_types_at_the_edge(degraded, field, value):
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], field: value}
    resp = degraded.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field


def test_lax_but_valid_json_numbers_still_pass_validation(degraded):
    # OpenAI takes an integer where a number is expected: temperature 1 is not a type error.
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "temperature": 1,
            "max_tokens": 4, "stream": False}
    resp = degraded.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 503  # validated, then no engine to serve it


@pytest.mark.parametrize("model", [
    "sql-lora@99999999999999999999999",
    "sql-lora@\u00b2",  # superscript two: str.isdigit() says yes, int() says no
    "sql-lora@\u0661",  # Arabic-Indic one: int() reads it as 1
    "sql-lora@0",
])
def test_version_numbers_are_ascii_digits_in_range(degraded, model):
    """Refused at the edge, before any registry call (which is down here: a 503 would mean the
    gateway asked it)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    resp = degraded.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "model"
    assert "version" in error["message"]


def test_an_engine_refuses_at_once_what_would_wait_past_the_queue_time_limit(tmp_path):
    """Backpressure on a real Engine: with one slot held by a request that has held it for
    about as long as requests take, a second one would wait ~10 s > 5 s: 429 now, with a
    retry-after, rather than queued."""
    import asyncio

    from services.gateway.admission import EngineBusy
    from services.gateway.engines import Engine, EngineState
    from services.gateway.served import ServedBase

    async def scenario():
        settings = GatewaySettings(home=tmp_path, max_concurrent_per_engine=1,
                                   max_queue_time_s=5)
        engine = Engine("e", settings, ServedBase("m", tmp_path), "http://x")
        engine.state = EngineState.READY
        async with engine.admit() as slot:  # a first request, served in full
            slot.served = True
        assert engine.service_time.seconds is not None  # learnt from it
        engine.service_time.seconds = 10.0  # as if requests took 10 s lately
        release = asyncio.Event()

        async def hold():
            async with engine.admit():
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        with pytest.raises(EngineBusy) as info:
            async with engine.admit():
                pass
        assert info.value.retry_after_s == 5
        assert engine.waiting == 0  # refused, not queued
        release.set()
        await holder
        before = engine.service_time.seconds
        async with engine.admit():  # not marked served (failed, abandoned): not learnt from
            pass
        assert engine.service_time.seconds == before

    asyncio.run(scenario())


def test_backpressure_off_queues_as_before(tmp_path):
    import asyncio

    from services.gateway.engines import Engine, EngineState
    from services.gateway.served import ServedBase

    async def scenario():
        settings = GatewaySettings(home=tmp_path, max_concurrent_per_engine=1,
                                   max_queue_time_s=0)
        engine = Engine("e", settings, ServedBase("m", tmp_path), "http://x")
        engine.state = EngineState.READY
        engine.service_time.seconds = 600.0
        release = asyncio.Event()

        async def hold():
            async with engine.admit():
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0)
        assert (engine.in_flight, engine.waiting) == (1, 2)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


class _FilesRegistry:
    """Registry reads over in-memory versions; `pull` writes the files as a client before the
    file-layout rules did, so a stored name the file system cannot hold fails as it did."""

    def __init__(self, files_by_name: dict[str, dict[str, bytes]]):
        import hashlib

        from services.common.stubs import registry_pb2

        self.versions, self.files, self.pulls = {}, files_by_name, 0
        for name, files in files_by_name.items():
            entries = [registry_pb2.FileEntry(path=p, size_bytes=len(b),
                                              sha256=hashlib.sha256(b).hexdigest())
                       for p, b in files.items()]
            digest = hashlib.sha256(name.encode()).hexdigest()
            self.versions[name] = registry_pb2.ArtifactVersion(
                name=name, version=1,
                manifest=registry_pb2.Manifest(files=entries, sha256=digest),
                adapter=registry_pb2.AdapterInfo(base_model=BASE, peft_type="LORA", rank=8))

    async def resolve(self, kind, ref):
        from services.common.errors import NotFound

        name = ref.partition("@")[0]
        if name not in self.versions:
            raise NotFound(ref)
        return self.versions[name]

    async def list(self, kind=None):
        from services.common.stubs import registry_pb2

        return [registry_pb2.Artifact(name=n, latest=v) for n, v in self.versions.items()]

    async def pull(self, kind, ref, dest):
        self.pulls += 1
        name = ref.partition("@")[0]
        for path, data in self.files[name].items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return self.versions[name]


def test_a_version_that_cannot_be_written_to_disk_is_a_clean_400_and_not_listed(tmp_path):
    """Issue 17 defect 1: a stored file name longer than the file system allows was a 500
    (`ENAMETOOLONG` while materialising the cache) on every request, and still listed."""
    import asyncio

    from services.common.errors import FailedPrecondition
    from services.gateway.cache import VerifiedDiskCache
    from services.gateway.resolver import ModelResolver

    registry = _FilesRegistry({
        "long-lora": {"adapter_config.json": b"{}", "x" * 300 + ".bin": b"w"},
        "good-lora": {"adapter_config.json": b"{}", "adapter_model.safetensors": b"w"},
    })
    base = tmp_path / BASE
    base.mkdir()
    (base / "config.json").write_text("{}")
    settings = GatewaySettings(home=tmp_path, base_models=[str(base)])
    cache = VerifiedDiskCache(tmp_path / "cache", max_bytes=10_000)
    resolver = ModelResolver(settings, registry, cache)

    async def scenario():
        await resolver.prepare_bases()
        long_key = registry.versions["long-lora"].manifest.sha256
        with pytest.raises(FailedPrecondition) as info:
            await cache.local_copy(registry, "adapter", "long-lora@1", long_key)
        err = info.value
        assert err.mapping.http_status == 400 and err.param == "model"
        assert err.code == "adapter_not_servable"
        assert "long-lora@1 cannot be served" in err.message
        assert str(tmp_path) not in err.message
        # Nothing half-written is left, and the cache still serves other versions.
        assert [p.name for p in (tmp_path / "cache").iterdir()] == []
        good_key = registry.versions["good-lora"].manifest.sha256
        entry = await cache.local_copy(registry, "adapter", "good-lora@1", good_key)
        assert (entry.path / "adapter_model.safetensors").read_bytes() == b"w"
        # Known now: no longer listed, and a request gets the reason without another fetch.
        listed = [a.name for a, _ in await resolver.servable_adapters()]
        assert listed == ["good-lora"]
        pulls = registry.pulls
        with pytest.raises(FailedPrecondition, match="cannot be served"):
            await resolver.resolve("long-lora")
        assert registry.pulls == pulls

    asyncio.run(scenario())
