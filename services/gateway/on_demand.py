"""Models served by engines the gateway starts when a request asks for them.

Two kinds of model come here (serving.py decides, from what the resolver says):
- a model in the registry that is not one of the configured bases (an export, a base pushed
  after the gateway started): asked by its name (`name`, `name@3`, `name@alias`);
- an adapter vLLM cannot load at runtime (DoRA, modules_to_save, a rank above max_lora_rank):
  served from its merged model. One already in the registry (a model whose `ModelInfo`
  says it was merged from that exact adapter version) is used; otherwise the trainer is asked
  for an export job, once per adapter version (its idempotency key), in the dtype the engines
  serve, and the merged model is published as `<adapter>-v<N>-merged`.

At most `on_demand_engines` run at once; at the limit an idle one (no request in flight or
waiting) is stopped to make room, and with none idle the request gets 503. An engine with no
request for `on_demand_idle_s` is stopped. A request waits up to `on_demand_wait_s` in all
for the merge and the engine's start, then gets 503 with `retry-after`; the work goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping

from services.common.errors import FailedPrecondition, NotFound, Unavailable
from services.common.refs import NAME_RE
from services.common.stubs import registry_pb2, trainer_pb2
from services.gateway import metrics
from services.gateway.cache import VerifiedDiskCache
from services.gateway.engines import Engine, EngineManager, EngineState
from services.gateway.fine_tuning.names import OWNER_LABEL
from services.gateway.fine_tuning.upstream import TrainerAccess
from services.gateway.keyed_locks import KeyedLocks
from services.gateway.registry_reader import RegistryReader
from services.gateway.resolver import NeedsMerge, visible_to
from services.gateway.served import ServedBase
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

RETRY_AFTER_S = 15
_POLL_S = 1.0
_MERGE_ATTEMPTS = 3
# An engine serves at least this long idle before another model may take its place.
EVICT_AFTER_IDLE_S = 30.0
PRECISIONS = {
    "float32": trainer_pb2.PRECISION_FP32,
    "bfloat16": trainer_pb2.PRECISION_BF16,
    "float16": trainer_pb2.PRECISION_FP16,
}
FINAL = (
    trainer_pb2.JOB_STATE_SUCCEEDED,
    trainer_pb2.JOB_STATE_FAILED,
    trainer_pb2.JOB_STATE_CANCELLED,
)


def merged_name(adapter: registry_pb2.ArtifactVersion) -> str:
    """The model an adapter version's merge is published as: readable when it fits a name."""
    name = f"{adapter.name}-v{adapter.version}-merged"
    if NAME_RE.fullmatch(name):
        return name
    digest = hashlib.sha256(f"{adapter.name}@{adapter.version}".encode()).hexdigest()[:16]
    return f"merged-{digest}"


def _not_ready(what: str) -> Unavailable:
    error = Unavailable(f"{what}; retry shortly", code="model_starting")
    error.retry_after_s = RETRY_AFTER_S  # type: ignore[attr-defined]
    return error


class OnDemandModels:
    def __init__(self, settings: GatewaySettings, registry: RegistryReader,
                 cache: VerifiedDiskCache, engines: EngineManager, trainer: TrainerAccess,
                 pinned: Callable[[], Collection[str]],
                 bases: Mapping[str, ServedBase] | None = None):
        self._settings = settings
        self._registry = registry
        self._cache = cache
        self._manager = engines
        self._trainer = trainer
        self._pinned = pinned  # cache keys engines read (bases, resident adapters)
        self._bases = bases if bases is not None else {}  # the configured bases, by name
        self._waiters: Counter[str] = Counter()  # requests waiting for each model's engine
        self._running: dict[str, Engine] = {}  # `name@version` -> its engine
        self._started_at: dict[str, float] = {}  # `name@version` -> when its engine was added
        self._merges: dict[str, registry_pb2.ArtifactVersion] = {}  # adapter ref -> its merge
        self._locks = KeyedLocks()
        self._room = asyncio.Lock()
        self._min_idle_s = min(EVICT_AFTER_IDLE_S, settings.on_demand_idle_s)
        self._reaper: asyncio.Task | None = None

    def deadline(self) -> float:
        return time.monotonic() + self._settings.on_demand_wait_s

    def keys(self) -> set[str]:
        """Cache keys of the models on-demand engines serve: the cache keeps them."""
        return {e.base.cache_key for e in self._running.values()
                if e.base is not None and e.base.cache_key}

    # -- which model ---------------------------------------------------------------------

    async def model(self, ref: str, owner: str | None) -> ServedBase:
        """The registry model `ref` names, as a local folder; NotFound when there is none the
        caller may see (a merged model keeps its adapter's owner)."""
        version = await self._registry.resolve("model", ref)
        if not visible_to(version.labels, owner) or not await self._merged_from_visible(
            version, owner
        ):
            raise NotFound(f"no model {ref}", param="model", code="model_not_found")
        configured = self._bases.get(version.name)
        if configured is not None and configured.version == version.version:
            return configured  # `name@alias` of a served base: its own engines serve it
        return await self._local(version)

    async def _merged_from_visible(
        self, version: registry_pb2.ArtifactVersion, owner: str | None
    ) -> bool:
        """A merge is its adapter's: whoever may not use the adapter may not use the merge
        (also one exported without the owner label)."""
        source = version.model.merged_from_adapter if version.WhichOneof("info") == "model" else ""
        if not source:
            return True
        try:
            adapter = await self._registry.resolve("adapter", source)
        except NotFound:
            return True  # the adapter is gone; the merge's own label decided
        return visible_to(adapter.labels, owner)

    def is_configured(self, base: ServedBase) -> bool:
        return self._bases.get(base.name) is base

    async def merged(self, needs: NeedsMerge, deadline: float) -> ServedBase:
        """The merged model of the adapter version `needs` names, made by the trainer when the
        registry has none yet."""
        found = self._merges.get(needs.ref) or await self._find_merged(needs.ref)
        if found is None:
            found = await self._merge(needs, deadline)
        self._merges[needs.ref] = found  # an adapter version's merge never changes...
        try:
            return await self._local(found)
        except NotFound:  # ... unless it is deleted: the next request merges again
            self._merges.pop(needs.ref, None)
            raise _not_ready(f"the merged model of {needs.ref} is gone; merging it again") from None

    async def _find_merged(self, ref: str) -> registry_pb2.ArtifactVersion | None:
        for artifact in await self._registry.list("model"):
            info = artifact.latest.model
            if artifact.latest.WhichOneof("info") == "model" and info.merged_from_adapter == ref:
                return artifact.latest
        return None

    async def _merge(self, needs: NeedsMerge, deadline: float) -> registry_pb2.ArtifactVersion:
        adapter = needs.version
        try:
            self._trainer.client  # noqa: B018 - FailedPrecondition when there is none
        except FailedPrecondition:
            raise FailedPrecondition(
                f"{needs.message} This gateway would serve it merged, but has no trainer to "
                "merge it (TUNEPLEX_GATEWAY_TRAINER_TARGET).",
                param="model", code="adapter_not_servable",
            ) from None
        owner = adapter.labels.get(OWNER_LABEL)
        precision = PRECISIONS.get(self._settings.dtype, trainer_pb2.PRECISION_UNSPECIFIED)
        for attempt in range(_MERGE_ATTEMPTS):
            job = await self._export(needs, precision, owner, attempt, deadline)
            try:
                return await self._registry.resolve("model", job.output)
            except NotFound:  # that merge was published, then deleted: make it again
                log.info("the merge %s of %s is gone; merging again", job.output, needs.ref)
        raise FailedPrecondition(
            f"adapter {needs.ref} cannot be served: its merged model was deleted "
            f"{_MERGE_ATTEMPTS} times", param="model", code="merge_failed")

    async def _export(self, needs: NeedsMerge, precision: int, owner: str | None,
                      attempt: int, deadline: float) -> trainer_pb2.Job:
        """The trainer's export job of this adapter version in `precision`, once it has
        succeeded; one per (version, precision, attempt) whichever request or gateway replica
        asks first (its idempotency key)."""
        metrics.MERGES.labels(outcome="asked").inc()
        key = f"tuneplex-merge-{needs.ref}-{trainer_pb2.Precision.Name(precision).lower()}"
        job = await self._trainer.call(
            "create_export", needs.ref, merged_name(needs.version),
            precision=precision,
            idempotency_key=key if attempt == 0 else f"{key}-{attempt}",
            labels={OWNER_LABEL: owner} if owner else None,
        )
        while job.state not in FINAL:
            if time.monotonic() >= deadline:
                raise _not_ready(f"adapter {needs.ref} is being merged for serving")
            await asyncio.sleep(_POLL_S)
            job = await self._trainer.call("get_job", job.id)
        if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            metrics.MERGES.labels(outcome="failed").inc()
            why = job.error.message or "the export job was cancelled"
            raise FailedPrecondition(
                f"adapter {needs.ref} cannot be served: merging it failed ({why})",
                param="model", code="merge_failed",
            )
        metrics.MERGES.labels(outcome="succeeded").inc()
        log.info("merged %s into %s for serving", needs.ref, job.output)
        return job

    async def _local(self, version: registry_pb2.ArtifactVersion) -> ServedBase:
        """The model's verified local folder. Verified (every byte hashed) when its engine
        starts, not on every request it serves."""
        ref = f"{version.name}@{version.version}"
        running = self._running.get(ref)
        if running is not None and running.base is not None:
            return running.base
        entry = await self._cache.local_copy(
            self._registry, "model", ref, version.manifest.sha256,
            lambda: {*self._pinned(), *self.keys()},
        )
        return ServedBase(version.name, entry.path, version.version, entry.key)

    # -- its engine ----------------------------------------------------------------------

    async def engines(self, base: ServedBase, deadline: float, reason: str) -> list[Engine]:
        """The ready engine serving `base`, started when there is none; Unavailable (503 with
        retry-after) when it is not ready by `deadline`."""
        self._waiters[base.ref] += 1  # counted before anything: no one evicts what it waits for
        try:
            async with self._locks.hold(base.ref):
                engine = self._running.get(base.ref)
                if engine is None:
                    engine = await self._start(base, reason)
            while engine.state != EngineState.READY:
                if engine.state == EngineState.STOPPED:
                    raise _not_ready(f"the engine for {base.name} was stopped")
                if time.monotonic() >= deadline:
                    raise _not_ready(f"the engine for {base.name} is starting")
                await asyncio.sleep(0.25)
            engine.last_used = time.monotonic()  # its start took long: that was not idleness
            return [engine]
        finally:
            self._waiters[base.ref] -= 1
            if not self._waiters[base.ref]:
                del self._waiters[base.ref]

    async def _start(self, base: ServedBase, reason: str) -> Engine:
        async with self._room:
            while len(self._running) >= self._settings.on_demand_engines:
                # Only one that has served nothing for a while: two models asked in turn must
                # not stop each other's engine at every request.
                now = time.monotonic()
                idle = [e for ref, e in self._running.items()
                        if e.load == 0 and not self._waiters.get(ref)
                        and e.state != EngineState.STARTING
                        and now - e.last_used >= self._min_idle_s]
                if not idle:
                    raise _not_ready(
                        f"every on-demand engine ({self._settings.on_demand_engines}) is busy "
                        f"with another model, so {base.name} cannot start now")
                await self._stop(min(idle, key=lambda e: e.last_used), "evicted")
            engine = self._manager.add(base, f"on-demand-{base.name}-v{base.version}")
            self._running[base.ref] = engine
            self._started_at[base.ref] = time.monotonic()
        metrics.ON_DEMAND_STARTS.labels(reason=reason).inc()
        metrics.ON_DEMAND_ENGINES.set(len(self._running))
        log.info("starting an engine on demand for %s (%s)", base.ref, reason)
        return engine

    async def _stop(self, engine: Engine, reason: str) -> None:
        assert engine.base is not None
        self._running.pop(engine.base.ref, None)
        self._started_at.pop(engine.base.ref, None)
        await self._manager.remove(engine)
        metrics.ON_DEMAND_STOPS.labels(reason=reason).inc()
        metrics.ON_DEMAND_ENGINES.set(len(self._running))
        log.info("stopped the on-demand engine of %s (%s)", engine.base.ref, reason)

    # -- idle engines --------------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="on-demand-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    async def reap_idle(self) -> None:
        """Stop every engine that has served nothing for `on_demand_idle_s` (one still
        starting is left to start), and one that has not come up for longer than a start may
        take plus that: it would hold its place for ever."""
        now = time.monotonic()
        never_up_after = self._settings.engine_start_timeout_s + self._settings.on_demand_idle_s
        async with self._room:
            for ref, engine in list(self._running.items()):
                if engine.load or self._waiters.get(ref):
                    continue
                # From its start, or from when it was last up (one that served for an hour and
                # then crashed gets a full start's time to come back).
                down_since = max(self._started_at.get(ref, now), engine.last_used)
                if engine.state != EngineState.READY and now - down_since >= never_up_after:
                    await self._stop(engine, "never_ready")
                elif (engine.state != EngineState.STARTING
                      and now - engine.last_used >= self._settings.on_demand_idle_s):
                    await self._stop(engine, "idle")

    async def _reap(self) -> None:
        interval = min(5.0, self._settings.on_demand_idle_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_idle()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("stopping idle on-demand engines failed")
