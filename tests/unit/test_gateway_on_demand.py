"""On-demand engines (services/gateway/on_demand.py): which model, its merge by the trainer, the
engine's start, capacity and idle stop, and the 503 a request gets past its wait. The engine
manager and the trainer are stand-ins here (real vLLM and the real trainer: the e2e test
tests/e2e/test_export_gateway.py); the decisions under test are the gateway's own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.common.errors import FailedPrecondition, NotFound, Unavailable
from services.common.stubs import registry_pb2, trainer_pb2
from services.gateway.engines import EngineState
from services.gateway.fine_tuning.upstream import TrainerAccess
from services.gateway.http_errors import retry_headers
from services.gateway.on_demand import OnDemandModels, merged_name
from services.gateway.resolver import NeedsMerge
from services.gateway.served import ServedBase, export_hint
from services.gateway.settings import GatewaySettings
from tests.unit.test_gateway_resolver import AliasRegistry, adapter_version


class FakeEngine:
    def __init__(self, base: ServedBase, engine_id: str):
        self.base, self.id = base, engine_id
        self.state = EngineState.STARTING
        self.in_flight = self.waiting = 0
        self.last_used = time.monotonic()
        self.on_demand = True

    @property
    def load(self) -> int:
        return self.in_flight + self.waiting


class FakeManager:
    """Starts nothing: `add` hands out an engine the test makes ready."""

    manages_processes = True

    def __init__(self):
        self.added: list[FakeEngine] = []
        self.removed: list[FakeEngine] = []

    def add(self, base: ServedBase, engine_id: str) -> FakeEngine:
        engine = FakeEngine(base, engine_id)
        self.added.append(engine)
        return engine

    async def remove(self, engine: FakeEngine) -> None:
        engine.state = EngineState.STOPPED
        self.removed.append(engine)


class FakeCache:
    async def local_copy(self, registry, kind, ref, key, in_use=None):
        return SimpleNamespace(path=Path("/models") / ref, key=key)


class FakeTrainer:
    """The trainer's export jobs as the gateway sees them: one job per idempotency key."""

    def __init__(self, outcome=trainer_pb2.JOB_STATE_SUCCEEDED, polls: int = 2):
        self.exports: list[dict] = []
        self.outcome, self.polls = outcome, polls
        self.registry: AliasRegistry | None = None

    def create_export(self, adapter, name, **kwargs):
        self.exports.append({"adapter": adapter, "name": name, **kwargs})
        return trainer_pb2.Job(id="job-x", state=trainer_pb2.JOB_STATE_QUEUED)

    def get_job(self, job_id):
        self.polls -= 1
        if self.polls > 0:
            return trainer_pb2.Job(id=job_id, state=trainer_pb2.JOB_STATE_RUNNING)
        if self.outcome != trainer_pb2.JOB_STATE_SUCCEEDED:
            return trainer_pb2.Job(
                id=job_id, state=self.outcome, error=trainer_pb2.JobError(message="out of memory")
            )
        name = self.exports[-1]["name"]
        assert self.registry is not None
        self.registry.targets[f"{name}@1"] = model_version(name, merged_from="dora@1")
        return trainer_pb2.Job(id=job_id, state=self.outcome, output=f"{name}@1")

    def close(self):
        pass


def model_version(name, version=1, merged_from="", **labels):
    return registry_pb2.ArtifactVersion(
        name=name,
        version=version,
        labels=labels,
        manifest=registry_pb2.Manifest(sha256=f"{version:063d}m"),
        model=registry_pb2.ModelInfo(merged_from_adapter=merged_from),
    )


def make(tmp_path, trainer=None, **settings):
    registry = AliasRegistry()
    manager = FakeManager()
    fake = trainer if trainer is not None else FakeTrainer()
    if fake:
        fake.registry = registry
    access = TrainerAccess((lambda: fake) if fake else None)
    gateway_settings = GatewaySettings(home=tmp_path, **settings)
    cache: Any = FakeCache()
    engines: Any = manager  # stand-ins of the cache and the engine manager (module docstring)
    on_demand = OnDemandModels(gateway_settings, registry, cache, engines, access, lambda: set())
    return on_demand, registry, manager, fake


def dora(**labels):
    version = adapter_version("dora", use_dora=True)
    version.labels.update(labels)
    return NeedsMerge(f"adapter dora@1 uses DoRA: {export_hint('dora@1')}.", version)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr("services.gateway.on_demand._POLL_S", 0.01)


async def ready_soon(manager: FakeManager, index: int = -1, after: float = 0.05):
    await asyncio.sleep(after)
    manager.added[index].state = EngineState.READY


async def test_a_registry_model_gets_one_engine_reused_by_the_next_request(tmp_path):
    on_demand, registry, manager, _ = make(tmp_path)
    registry.targets["exported"] = model_version("exported")
    base = await on_demand.model("exported", owner=None)
    asyncio.ensure_future(ready_soon(manager))
    [engine] = await on_demand.engines(base, on_demand.deadline(), "registry model")
    assert engine.state == EngineState.READY and len(manager.added) == 1
    assert await on_demand.engines(base, on_demand.deadline(), "registry model") == [engine]
    assert len(manager.added) == 1


async def test_another_owners_model_is_not_found(tmp_path):
    on_demand, registry, _, _ = make(tmp_path)
    registry.targets["theirs"] = model_version("theirs", **{"tuneplex.owner": "team-b"})
    with pytest.raises(NotFound):
        await on_demand.model("theirs", owner="team-a")
    assert (await on_demand.model("theirs", owner="team-b")).name == "theirs"


async def test_past_its_wait_a_request_gets_503_with_retry_after_and_the_start_goes_on(tmp_path):
    on_demand, registry, manager, _ = make(tmp_path, on_demand_wait_s=0.2)
    registry.targets["slow"] = model_version("slow")
    base = await on_demand.model("slow", owner=None)
    with pytest.raises(Unavailable) as waited:
        await on_demand.engines(base, on_demand.deadline(), "registry model")
    assert retry_headers(waited.value) == {"x-should-retry": "true", "retry-after": "15"}
    assert "starting" in waited.value.message and not manager.removed
    manager.added[0].state = EngineState.READY  # the next request finds it ready
    assert await on_demand.engines(base, on_demand.deadline(), "registry model")


async def test_at_capacity_an_idle_engine_makes_room_and_a_busy_one_does_not(tmp_path):
    on_demand, registry, manager, _ = make(tmp_path, on_demand_engines=1, on_demand_wait_s=1)
    for name in ("one", "two", "three"):
        registry.targets[name] = model_version(name)
    one = await on_demand.model("one", owner=None)
    asyncio.ensure_future(ready_soon(manager, 0))
    [first] = await on_demand.engines(one, on_demand.deadline(), "registry model")
    two = await on_demand.model("two", owner=None)
    # Just used: it keeps its place (two models asked in turn must not stop each other's).
    with pytest.raises(Unavailable, match="busy"):
        await on_demand.engines(two, on_demand.deadline(), "registry model")
    first.last_used -= 31  # idle for a while now: it makes room
    asyncio.ensure_future(ready_soon(manager, 1))
    [second] = await on_demand.engines(two, on_demand.deadline(), "registry model")
    assert manager.removed == [first] and second.base.name == "two"
    second.last_used -= 31
    second.in_flight = 1  # busy: it stays, and the third model cannot start now
    three = await on_demand.model("three", owner=None)
    with pytest.raises(Unavailable) as busy:
        await on_demand.engines(three, on_demand.deadline(), "registry model")
    assert "busy" in busy.value.message and manager.removed == [first]


async def test_an_idle_engine_is_stopped_after_its_ttl_a_busy_or_starting_one_is_not(tmp_path):
    on_demand, registry, manager, _ = make(tmp_path, on_demand_engines=3, on_demand_idle_s=60)
    for name in ("idle", "busy", "starting"):
        registry.targets[name] = model_version(name)
    for name in ("idle", "busy"):
        base = await on_demand.model(name, owner=None)
        asyncio.ensure_future(ready_soon(manager))
        await on_demand.engines(base, on_demand.deadline(), "registry model")
    starting = await on_demand.model("starting", owner=None)
    with pytest.raises(Unavailable):
        await on_demand.engines(starting, time.monotonic(), "registry model")
    idle, busy, still_starting = manager.added
    busy.in_flight = 1
    for engine in manager.added:
        engine.last_used -= 61
    await on_demand.reap_idle()
    assert manager.removed == [idle]
    assert busy.state == EngineState.READY and still_starting.state == EngineState.STARTING


async def test_an_adapter_vllm_cannot_load_is_merged_once_in_the_engines_dtype(tmp_path):
    on_demand, registry, _, trainer = make(tmp_path, dtype="float32")
    base = await on_demand.merged(dora(**{"tuneplex.owner": "team-a"}), on_demand.deadline())
    assert base.name == "dora-v1-merged"
    [export] = trainer.exports
    assert export == {
        "adapter": "dora@1",
        "name": "dora-v1-merged",
        "precision": trainer_pb2.PRECISION_FP32,
        "idempotency_key": "tuneplex-merge-dora@1-precision_fp32",
        "labels": {"tuneplex.owner": "team-a"},  # the merge stays its owner's
    }


async def test_a_merge_already_in_the_registry_is_used_without_the_trainer(tmp_path):
    on_demand, registry, _, trainer = make(tmp_path)
    registry.targets["hand-made"] = model_version("hand-made", merged_from="dora@1")
    registry.targets["other"] = model_version("other", merged_from="dora@2")
    base = await on_demand.merged(dora(), on_demand.deadline())
    assert base.name == "hand-made" and trainer.exports == []


async def test_a_merge_that_fails_or_cannot_be_made_says_why(tmp_path):
    failed, *_ = make(tmp_path, trainer=FakeTrainer(outcome=trainer_pb2.JOB_STATE_FAILED))
    with pytest.raises(FailedPrecondition) as refused:
        await failed.merged(dora(), failed.deadline())
    assert refused.value.code == "merge_failed" and "out of memory" in refused.value.message
    no_trainer, *_ = make(tmp_path, trainer=False)
    with pytest.raises(FailedPrecondition) as alone:
        await no_trainer.merged(dora(), no_trainer.deadline())
    assert "TUNEPLEX_GATEWAY_TRAINER_TARGET" in alone.value.message
    assert "tuneplex export dora@1" in alone.value.message  # the way out by hand still shown


async def test_a_merge_still_running_at_the_deadline_is_a_503(tmp_path):
    slow, *_ = make(tmp_path, trainer=FakeTrainer(polls=100))
    with pytest.raises(Unavailable) as waited:
        await slow.merged(dora(), time.monotonic() + 0.01)
    assert "being merged" in waited.value.message and retry_headers(waited.value)


def test_the_merged_models_name_fits_the_registrys_rule():
    long = adapter_version("a" * 60, version=12)
    assert merged_name(adapter_version("sql", version=3)) == "sql-v3-merged"
    name = merged_name(long)
    assert name.startswith("merged-") and len(name) <= 63


async def test_a_running_model_is_not_hashed_again_per_request_and_a_dead_start_gives_way(
    tmp_path,
):
    on_demand, registry, manager, _ = make(
        tmp_path, on_demand_idle_s=60, engine_start_timeout_s=100
    )
    registry.targets["m"] = model_version("m")
    copies = []
    real_local_copy = on_demand._cache.local_copy

    async def counted(*args, **kwargs):
        copies.append(args[2])
        return await real_local_copy(*args, **kwargs)

    on_demand._cache.local_copy = counted
    base = await on_demand.model("m", owner=None)
    asyncio.ensure_future(ready_soon(manager))
    await on_demand.engines(base, on_demand.deadline(), "registry model")
    await on_demand.model("m", owner=None)
    assert copies == ["m@1"]  # the second request reuses the running engine's folder
    # An engine that never comes up is stopped once a start plus the idle time has passed.
    manager.added[0].state = EngineState.DOWN
    on_demand._started_at["m@1"] -= 161
    manager.added[0].last_used -= 161
    await on_demand.reap_idle()
    assert manager.removed == manager.added


async def test_an_alias_of_a_served_base_is_that_base_not_a_second_engine(tmp_path):
    on_demand, registry, manager, _ = make(tmp_path)
    served = ServedBase("qwen", Path("/models/qwen"), 1, "k1")
    on_demand._bases = {"qwen": served}
    registry.targets["qwen@prod"] = model_version("qwen", version=1)
    registry.targets["qwen@2"] = model_version("qwen", version=2)
    assert await on_demand.model("qwen@prod", owner=None) is served
    other = await on_demand.model("qwen@2", owner=None)
    assert other is not served and other.version == 2 and not on_demand.is_configured(other)


async def test_a_merge_is_its_adapters_even_without_an_owner_label(tmp_path):
    on_demand, registry, _, _ = make(tmp_path)
    registry.targets["theirs-merged"] = model_version("theirs-merged", merged_from="theirs@1")
    adapter = adapter_version("theirs")
    adapter.labels["tuneplex.owner"] = "team-b"
    registry.targets["theirs@1"] = adapter
    with pytest.raises(NotFound):
        await on_demand.model("theirs-merged", owner="team-a")
    assert (await on_demand.model("theirs-merged", owner="team-b")).name == "theirs-merged"


async def test_a_deleted_merge_is_made_again(tmp_path):
    on_demand, registry, _, trainer = make(tmp_path)
    await on_demand.merged(dora(), on_demand.deadline())
    # Deleted from the registry; the trainer's job for the first key still says where it was.
    del registry.targets["dora-v1-merged@1"]
    on_demand._merges.clear()

    original = trainer.create_export

    def export_once_per_key(adapter, name, **kwargs):
        if kwargs["idempotency_key"] == "tuneplex-merge-dora@1-precision_fp32":
            trainer.exports.append({"adapter": adapter, "name": name, **kwargs})
            return trainer_pb2.Job(
                id="job-x", state=trainer_pb2.JOB_STATE_SUCCEEDED, output="dora-v1-merged@1"
            )
        trainer.polls = 1
        return original(adapter, name, **kwargs)

    trainer.create_export = export_once_per_key
    base = await on_demand.merged(dora(), on_demand.deadline())
    assert base.name == "dora-v1-merged"
    assert trainer.exports[-1]["idempotency_key"] == "tuneplex-merge-dora@1-precision_fp32-1"


def test_a_served_bases_engines_are_never_an_on_demand_one(tmp_path):
    from services.gateway.engines import Engine, EngineManager

    settings = GatewaySettings(home=tmp_path)
    manager = EngineManager(settings, listener=None)  # type: ignore[arg-type]
    own = Engine("qwen-0", settings, ServedBase("qwen", Path("/a"), 1), None)
    other = Engine("on-demand-qwen-v2", settings, ServedBase("qwen", Path("/b"), 2), None)
    other.on_demand = True
    manager.engines += [own, other]
    assert manager.for_base("qwen") == [own]
