"""AdapterResidency against a strict fake vLLM (tests/helpers/fake_vllm.py), no engine started:
one load for many concurrent requests, LRU room-making that spares adapters in use, forgetting
what an engine lost, and reloading after an engine restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import pytest
from fastapi import Request

from services.common.errors import FailedPrecondition, NotFound, Unavailable
from services.common.stubs import registry_pb2
from services.gateway import metrics
from services.gateway.cache import VerifiedDiskCache
from services.gateway.engines import Engine, EngineManager, EngineState
from services.gateway.registry_reader import RegistryReader
from services.gateway.residency import AdapterResidency
from services.gateway.resolver import ModelResolver
from services.gateway.served import AdapterVersion, ServedBase
from services.gateway.serving import OpenAIServing
from services.gateway.settings import GatewaySettings
from tests.helpers.fake_vllm import FakeVLLM

BASE = ServedBase("smollm2", Path("/models/smollm2"))


class AdapterRegistry:
    """The registry's reads over in-memory adapter versions with real files and manifests."""

    def __init__(self) -> None:
        self.versions: dict[str, registry_pb2.ArtifactVersion] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.pulls = 0
        self.down = False

    def add(self, name: str, version: int = 1) -> AdapterVersion:
        files = {"adapter_config.json": json.dumps({"r": 8, "name": name}).encode(),
                 "adapter_model.safetensors": f"{name}@{version}".encode() * 10}
        entries = [registry_pb2.FileEntry(path=p, size_bytes=len(b),
                                          sha256=hashlib.sha256(b).hexdigest())
                   for p, b in files.items()]
        digest = hashlib.sha256(json.dumps([e.sha256 for e in entries]).encode()).hexdigest()
        pb = registry_pb2.ArtifactVersion(
            name=name, version=version, manifest=registry_pb2.Manifest(files=entries,
                                                                       sha256=digest),
            adapter=registry_pb2.AdapterInfo(base_model=BASE.name, peft_type="LORA", rank=8))
        ref = f"{name}@{version}"
        self.versions[ref] = self.versions[name] = pb
        self.files[ref] = files
        return AdapterVersion(name, version, digest, BASE.name)

    async def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        if self.down:
            raise Unavailable("registry down")
        if ref not in self.versions:
            raise NotFound(f"{ref} not found")
        return self.versions[ref]

    async def list(self, kind: str | None = None) -> list[registry_pb2.Artifact]:
        latest = {v.name: v for v in self.versions.values()}
        return [registry_pb2.Artifact(name=n, latest=v) for n, v in latest.items()]

    async def pull(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        if self.down:
            raise Unavailable("registry down")
        self.pulls += 1
        dest.mkdir(parents=True, exist_ok=True)
        for path, data in self.files[ref].items():
            (dest / path).write_bytes(data)
        return self.versions[ref]


class Setup:
    def __init__(self, tmp_path: Path, capacity: int = 2):
        self.settings = GatewaySettings(home=tmp_path, max_loras=capacity,
                                        engine_urls=["http://engine-0"],
                                        engine_health_interval_s=0.02)
        self.registry = AdapterRegistry()
        self.cache = VerifiedDiskCache(tmp_path / "cache", 10**6)
        self.residency = AdapterResidency(self.settings, self.registry, self.cache)
        self.vllm = FakeVLLM(BASE.name)
        self.engine = Engine("engine-0", self.settings, BASE, "http://engine-0")
        self.engine.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.vllm.app),
                                               base_url="http://engine-0")
        self.engine.state = EngineState.READY

    def resident(self) -> list[str]:
        return [a.name for a in self.residency.resident(self.engine)]


def _loads(result: str) -> float:
    return metrics.ADAPTER_LOADS.labels(result=result)._value.get()


def test_the_test_fakes_are_registry_readers():
    # Checked structurally here (runtime_checkable: the methods exist) and by mypy, which
    # checks the signatures wherever a fake is passed where a RegistryReader is expected.
    assert isinstance(AdapterRegistry(), RegistryReader)
    assert not isinstance(object(), RegistryReader)


async def test_concurrent_first_requests_load_an_adapter_once(tmp_path):
    s = Setup(tmp_path)
    sql = s.registry.add("sql")
    await asyncio.gather(*(s.residency.ensure_loaded(s.engine, sql) for _ in range(20)))
    assert s.vllm.load_calls == [sql.lora_id]
    assert s.registry.pulls == 1
    assert s.resident() == ["sql"]
    assert s.residency.engines_with(sql.lora_id) == {"engine-0"}
    assert sql.cache_key in s.residency.cache_keys()


async def test_making_room_unloads_the_least_recently_used(tmp_path):
    s = Setup(tmp_path, capacity=2)
    a, b, c = (s.registry.add(n) for n in ("a", "b", "c"))
    await s.residency.ensure_loaded(s.engine, a)
    await s.residency.ensure_loaded(s.engine, b)
    await s.residency.ensure_loaded(s.engine, a)  # a used again: b is now the oldest
    await s.residency.ensure_loaded(s.engine, c)
    assert s.vllm.unloaded == [b.lora_id]
    assert set(s.vllm.loras) == {a.lora_id, c.lora_id}
    assert s.resident() == ["a", "c"]
    assert s.residency.engines_with(b.lora_id) == set()


async def test_making_room_never_unloads_an_adapter_a_request_is_using(tmp_path):
    s = Setup(tmp_path, capacity=2)
    a, b, c = (s.registry.add(n) for n in ("a", "b", "c"))
    async with s.residency.loaded(s.engine, a):  # a request is being handed to the engine
        await s.residency.ensure_loaded(s.engine, b)  # a is the least recently used now
        await s.residency.ensure_loaded(s.engine, c)
        assert a.lora_id in s.vllm.loras
        assert s.vllm.unloaded == [b.lora_id]
    assert s.resident() == ["a", "c"]


async def test_an_adapter_the_engine_lost_is_forgotten_and_loaded_again_on_the_next_request(
        tmp_path):
    s = Setup(tmp_path)
    sql = s.registry.add("sql")
    resolver = ModelResolver(s.settings, s.registry, s.cache)
    resolver.bases = {BASE.name: BASE}
    manager = EngineManager(s.settings, s.residency)
    manager.engines = [s.engine]
    serving = OpenAIServing(resolver, s.residency, manager, default_max_tokens=64)

    async def chat():
        body = {"model": "sql", "messages": [{"role": "user", "content": "hi"}]}
        resp = await serving.create("/v1/chat/completions", "/v1/chat/completions", body,
                                    _request())
        return json.loads(bytes(resp.body))

    assert (await chat())["model"] == "sql@1"
    s.vllm.restart()  # behind the gateway's back: the engine answers 404 for the adapter
    assert (await chat())["model"] == "sql@1"
    assert s.vllm.load_calls == [sql.lora_id, sql.lora_id]
    assert s.resident() == ["sql"]
    assert s.registry.pulls == 1  # the files were cached; only the engine had to load again

    s.residency.forget(s.engine, sql)
    assert s.residency.engines_with(sql.lora_id) == set()


async def test_after_an_engine_restart_the_adapters_it_had_are_loaded_again_in_lru_order(
        tmp_path):
    s = Setup(tmp_path, capacity=3)
    a, b, c = (s.registry.add(n) for n in ("a", "b", "c"))
    for adapter in (a, b, c, a):  # LRU order: b, c, a
        await s.residency.ensure_loaded(s.engine, adapter)
    reloaded = _loads("reloaded")
    s.vllm.restart()
    s.vllm.load_calls.clear()
    await s.residency.engine_ready(s.engine)
    assert s.vllm.load_calls == [b.lora_id, c.lora_id, a.lora_id]
    assert s.resident() == ["b", "c", "a"]
    assert _loads("reloaded") == reloaded + 3


async def test_an_engine_that_kept_some_adapters_gets_only_the_lost_ones(tmp_path):
    s = Setup(tmp_path, capacity=3)
    a, b = s.registry.add("a"), s.registry.add("b")
    await s.residency.ensure_loaded(s.engine, a)
    await s.residency.ensure_loaded(s.engine, b)
    del s.vllm.loras[b.lora_id]  # an attached engine lost one of them during an outage
    s.vllm.loras["someone-elses"] = "/elsewhere"
    s.vllm.load_calls.clear()
    await s.residency.engine_ready(s.engine)
    assert s.vllm.load_calls == [b.lora_id]
    assert s.resident() == ["a", "b"]  # the adapter someone else loaded is not tracked


async def test_an_adapter_that_cannot_come_back_is_dropped_not_fatal(tmp_path):
    s = Setup(tmp_path)
    a, b = s.registry.add("a"), s.registry.add("b")
    await s.residency.ensure_loaded(s.engine, a)
    await s.residency.ensure_loaded(s.engine, b)
    s.vllm.restart()
    s.vllm.broken.add(a.lora_id)
    await s.residency.engine_ready(s.engine)
    assert s.resident() == ["b"]
    assert a.cache_key not in s.residency.cache_keys()


async def test_an_engine_that_cannot_list_its_models_is_not_ready(tmp_path):
    s = Setup(tmp_path)
    sql = s.registry.add("sql")
    await s.residency.ensure_loaded(s.engine, sql)
    assert s.engine.client is not None
    await s.engine.client.aclose()
    s.engine.client = httpx.AsyncClient(transport=httpx.MockTransport(
        lambda request: httpx.Response(503)), base_url="http://engine-0")
    with pytest.raises(Unavailable):
        await s.residency.engine_ready(s.engine)
    assert s.resident() == ["sql"]  # kept, so a later attempt reloads it


async def test_an_adapter_an_attached_engine_kept_across_a_gateway_restart_is_adopted(
        tmp_path):
    s = Setup(tmp_path)
    sql = s.registry.add("sql")
    await s.residency.ensure_loaded(s.engine, sql)
    # A new gateway process: empty residency, the same engine still holding the adapter.
    fresh = AdapterResidency(s.settings, s.registry, s.cache)
    await fresh.ensure_loaded(s.engine, sql)  # vLLM answers 400 "already loaded"
    assert s.vllm.load_calls == [sql.lora_id, sql.lora_id]
    assert [a.name for a in fresh.resident(s.engine)] == ["sql"]


async def test_a_load_the_engine_refuses_is_a_400_with_the_export_hint(tmp_path):
    s = Setup(tmp_path)
    sql = s.registry.add("sql")
    s.vllm.broken.add(sql.lora_id)
    failed = _loads("failed")
    with pytest.raises(FailedPrecondition) as err:
        await s.residency.ensure_loaded(s.engine, sql)
    assert err.value.mapping.http_status == 400
    assert "tuneplex export sql@1" in err.value.message
    assert _loads("failed") == failed + 1
    assert s.resident() == []


async def test_an_engine_that_cannot_read_the_cache_is_refused_without_the_path(tmp_path):
    s = Setup(tmp_path)
    sql = s.registry.add("sql")
    s.vllm.mounts_cache = False  # an attached engine without the shared volume
    with pytest.raises(FailedPrecondition) as err:
        await s.residency.ensure_loaded(s.engine, sql)
    assert "cache_dir" in err.value.message
    assert str(tmp_path) not in err.value.message


async def test_the_engine_manager_reloads_adapters_when_an_engine_comes_back(tmp_path):
    s = Setup(tmp_path)
    sql = s.registry.add("sql")
    manager = EngineManager(s.settings, s.residency)
    manager.serve([BASE])
    [engine] = manager.engines
    engine.client = s.engine.client  # the same fake engine behind the attached URL
    manager.start()
    try:
        await _wait_for(lambda: engine.state == EngineState.READY)
        await s.residency.ensure_loaded(engine, sql)
        s.vllm.healthy = False  # an outage; the engine comes back as a fresh process
        await _wait_for(lambda: engine.state == EngineState.DOWN)
        s.vllm.restart()
        s.vllm.healthy = True
        await _wait_for(lambda: engine.state == EngineState.READY)
        assert sql.lora_id in s.vllm.loras  # loaded again before it took traffic
        assert s.vllm.load_calls == [sql.lora_id, sql.lora_id]
    finally:
        await manager.stop()


async def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def _request() -> Request:
    """A client that stays connected: receive() waits for good."""
    async def receive():
        await asyncio.Event().wait()

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)
