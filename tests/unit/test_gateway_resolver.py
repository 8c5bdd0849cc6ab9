"""ModelResolver decisions that need no engine: what is servable, on which base, and when the
registry is asked again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, NotFound, Unavailable
from services.common.stubs import registry_pb2
from services.gateway.cache import VerifiedDiskCache
from services.gateway.keyed_locks import KeyedLocks
from services.gateway.registry_reader import RegistryReader
from services.gateway.resolver import ModelResolver
from services.gateway.served import ServedBase
from services.gateway.settings import GatewaySettings

BASE = ServedBase("smollm2", Path("/models/smollm2"), version=1, cache_key="k")


def adapter_version(name="sql", version=1, base="smollm2@1", **info):
    info = {"peft_type": "LORA", "rank": 8, **info}
    return registry_pb2.ArtifactVersion(
        name=name, version=version, manifest=registry_pb2.Manifest(sha256=f"{version:064d}"),
        adapter=registry_pb2.AdapterInfo(base_model=base, **info))


class AliasRegistry:
    def __init__(self):
        self.targets: dict[str, registry_pb2.ArtifactVersion] = {}
        self.calls = 0
        self.down = False

    async def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        self.calls += 1
        if self.down:
            raise Unavailable("registry down")
        if ref not in self.targets:
            raise NotFound(f"{ref} not found")
        return self.targets[ref]

    async def list(self, kind: str | None = None) -> list[registry_pb2.Artifact]:
        return [registry_pb2.Artifact(name=v.name, latest=v) for v in self.targets.values()]

    async def pull(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        raise AssertionError("name resolution never downloads")


def make_resolver(tmp_path, registry: RegistryReader, **settings) -> ModelResolver:
    s = GatewaySettings(home=tmp_path, **settings)
    resolver = ModelResolver(s, registry, VerifiedDiskCache(tmp_path / "cache", 10**6))
    resolver.bases = {BASE.name: BASE}
    return resolver


def test_the_fake_registry_is_a_registry_reader():
    assert isinstance(AliasRegistry(), RegistryReader)


@pytest.mark.parametrize("info, words", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"rank": 64}, "max_lora_rank 16"),
    ({"peft_type": "IA3"}, "IA3"),
    ({"peft_type": "LOHA"}, "LOHA"),
    ({"peft_type": "LOKR"}, "LOKR"),
])
def test_adapters_vllm_cannot_load_get_an_export_hint(tmp_path, info, words):
    """Served through their merge when on-demand engines are on (serving.py reads NeedsMerge),
    else this 400 says how to export them."""
    from services.gateway.resolver import NeedsMerge

    registry = AliasRegistry()
    registry.targets["sql"] = adapter_version(**info)
    resolver = make_resolver(tmp_path, registry)
    with pytest.raises(NeedsMerge) as err:
        asyncio.run(resolver.resolve("sql"))
    assert words in err.value.message
    assert "tuneplex export sql@1" in err.value.message
    assert err.value.mapping.http_status == 400 and err.value.ref == "sql@1"


def test_a_peft_type_tuneplex_does_not_take_is_a_plain_400(tmp_path):
    from services.gateway.resolver import NeedsMerge

    registry = AliasRegistry()
    registry.targets["sql"] = adapter_version(peft_type="PROMPT_TUNING")
    with pytest.raises(FailedPrecondition) as err:
        asyncio.run(make_resolver(tmp_path, registry).resolve("sql"))
    assert not isinstance(err.value, NeedsMerge) and "cannot serve" in err.value.message


def test_adapter_for_another_base_is_a_400(tmp_path):
    registry = AliasRegistry()
    registry.targets["sql"] = adapter_version(base="qwen2.5-0.5b@1")
    with pytest.raises(FailedPrecondition, match="trained on qwen2.5-0.5b@1"):
        asyncio.run(make_resolver(tmp_path, registry).resolve("sql"))
    registry.targets["sql"] = adapter_version(base="smollm2@2")  # same name, other weights
    with pytest.raises(FailedPrecondition):
        asyncio.run(make_resolver(tmp_path, registry).resolve("sql"))


def test_base_model_names_resolve_without_the_registry(tmp_path):
    registry = AliasRegistry()
    resolver = make_resolver(tmp_path, registry)
    assert asyncio.run(resolver.resolve("smollm2")).adapter is None
    assert asyncio.run(resolver.resolve("smollm2@1")).base == BASE
    assert registry.calls == 0


def test_unknown_model_is_not_found_with_param_model(tmp_path):
    with pytest.raises(NotFound) as err:
        asyncio.run(make_resolver(tmp_path, AliasRegistry()).resolve("nope"))
    assert err.value.param == "model" and err.value.code == "model_not_found"


def test_aliases_are_asked_again_and_survive_a_registry_outage(tmp_path):
    registry = AliasRegistry()
    registry.targets["sql@prod"] = adapter_version(version=1)
    resolver = make_resolver(tmp_path, registry)

    async def scenario():
        first = await resolver.resolve("sql@prod")
        registry.targets["sql@prod"] = adapter_version(version=2)
        moved = await resolver.resolve("sql@prod")  # ttl 0: the move is seen at once
        registry.down = True
        stale = await resolver.resolve("sql@prod")  # last known answer beats an error
        return first, moved, stale

    first, moved, stale = asyncio.run(scenario())
    assert (first.adapter.version, moved.adapter.version, stale.adapter.version) == (1, 2, 2)
    assert first.adapter.lora_id != moved.adapter.lora_id
    assert moved.public_name == "sql@2"


def test_keyed_locks_serialise_one_key_only():
    locks, order = KeyedLocks(), []

    async def work(key, tag):
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    async def main():
        await asyncio.gather(work("a", 1), work("a", 2), work("b", 3))

    asyncio.run(main())
    assert order.index("1-") < order.index("2+")  # same key: one after the other
    assert order.index("3+") < order.index("1-")  # other key: in parallel
    assert not locks._locks
