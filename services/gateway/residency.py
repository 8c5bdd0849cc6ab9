"""AdapterResidency: the one owner of which adapter versions are registered in which engine.

It loads an adapter into an engine on first use (one load per (engine, adapter), however many
requests ask at once), unloads the least recently used beyond the engine's capacity
(`max_cpu_loras`: past it vLLM would thrash re-reading adapters from disk), forgets one an
engine says it does not know, and, told by the EngineManager that an engine became ready,
compares what the engine lists with what it should have and loads the rest again, least
recently used first so the LRU order survives. Adapters someone else registered in an attached
engine are left alone and not tracked.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path

import httpx

from services.common.errors import FailedPrecondition, TuneplexError, Unavailable
from services.gateway import metrics
from services.gateway.cache import VerifiedDiskCache
from services.gateway.engines import Engine
from services.gateway.keyed_locks import KeyedLocks
from services.gateway.registry_reader import RegistryReader
from services.gateway.served import AdapterVersion, export_hint
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def _nothing_pinned() -> Collection[str]:
    return ()


class AdapterResidency:
    def __init__(self, settings: GatewaySettings, registry: RegistryReader,
                 cache: VerifiedDiskCache, pinned: Callable[[], Collection[str]] = _nothing_pinned):
        self._capacity = settings.adapter_capacity
        self._registry = registry
        self._cache = cache
        self._pinned = pinned  # cache keys others own that the cache must keep (served bases)
        # engine id -> lora id -> adapter registered there, least recently used first.
        self._resident: dict[str, OrderedDict[str, AdapterVersion]] = {}
        # engine id -> lora id -> adapter being (re)loaded: counted against capacity already.
        self._loading: dict[str, dict[str, AdapterVersion]] = {}
        # (engine id, lora id) -> requests between "make sure it is loaded" and "the engine
        # has the request": an adapter is never unloaded under them.
        self._users: Counter[tuple[str, str]] = Counter()
        self._load_locks = KeyedLocks()

    # -- what is where -----------------------------------------------------------------------

    def resident(self, engine: Engine) -> list[AdapterVersion]:
        """The adapters registered in `engine`, least recently used first."""
        return list(self._resident.get(engine.id, {}).values())

    def engines_with(self, lora_id: str) -> set[str]:
        """Ids of the engines that have this adapter registered now (routing affinity)."""
        return {engine_id for engine_id, loras in self._resident.items() if lora_id in loras}

    def cache_keys(self) -> set[str]:
        """Cache entries engines read or are about to: resident or loading adapters, and what
        `pinned` names. vLLM may re-read a resident adapter's files, so they must stay."""
        keys = set(self._pinned())
        for table in (*self._resident.values(), *self._loading.values()):
            keys |= {a.cache_key for a in table.values()}
        return keys

    # -- requests ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def loaded(self, engine: Engine, adapter: AdapterVersion) -> AsyncIterator[None]:
        """Make sure `adapter` is registered in `engine` and keep it there while the caller
        hands the engine a request for it. Once the engine has accepted the request, an unload
        does not affect it, so the hold can end with the response headers."""
        key = (engine.id, adapter.lora_id)
        self._users[key] += 1
        try:
            await self.ensure_loaded(engine, adapter)
            yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]

    async def ensure_loaded(self, engine: Engine, adapter: AdapterVersion) -> None:
        loras = self._resident.setdefault(engine.id, OrderedDict())
        if adapter.lora_id in loras:
            loras.move_to_end(adapter.lora_id)
            return
        async with self._load_locks.hold((engine.id, adapter.lora_id)):
            if adapter.lora_id in loras:  # loaded while we waited for the lock
                loras.move_to_end(adapter.lora_id)
                return
            await self._load(engine, adapter, "loaded")

    async def warm(self, engine: Engine, adapter: AdapterVersion,
                   replaces: AdapterVersion) -> bool:
        """Load `adapter` into `engine` ahead of its traffic: the same path as a request's
        (verified cache copy, room made by LRU, one load per (engine, adapter)), but not a use.
        The version it `replaces` still serves until the alias moves, so room-making spares
        it, and the new one takes its place in the LRU order, not the most recent one: a warm
        that is never followed by traffic must not outlive adapters that get some. -> whether
        it was loaded now (False: it was there already, and its place is left as it was)."""
        loras = self._resident.setdefault(engine.id, OrderedDict())
        if adapter.lora_id in loras:
            return False
        held = (engine.id, replaces.lora_id)
        self._users[held] += 1
        try:
            async with self._load_locks.hold((engine.id, adapter.lora_id)):
                if adapter.lora_id in loras:
                    return False
                await self._load(engine, adapter, "warmed")
                _place_after(loras, adapter.lora_id, replaces.lora_id)
            return True
        finally:
            self._users[held] -= 1
            if not self._users[held]:
                del self._users[held]

    def forget(self, engine: Engine, adapter: AdapterVersion) -> None:
        """The engine answered that it does not know this adapter (it restarted behind our
        back): stop believing it is there, so the next ensure_loaded loads it again."""
        self._resident.get(engine.id, OrderedDict()).pop(adapter.lora_id, None)

    # -- engine lifecycle (EngineListener) ---------------------------------------------------

    async def engine_ready(self, engine: Engine) -> None:
        """The engine answers health after a (re)start or an outage: keep what it still has,
        load again what it lost. One that cannot come back is dropped, not fatal. Raises (the
        engine stays down and is retried) only when the engine cannot list its models."""
        registered = await self._registered(engine)
        loras = self._resident.setdefault(engine.id, OrderedDict())
        lost = [a for a in loras.values() if a.lora_id not in registered]
        loading = self._loading.setdefault(engine.id, {})
        for adapter in lost:
            del loras[adapter.lora_id]
            loading[adapter.lora_id] = adapter  # still counted, and its files still kept
        for lora_id in registered - set(loras) - set(loading):
            log.info("engine %s: ignoring adapter %s it already had", engine.id, lora_id)
        for adapter in lost:
            try:
                async with self._load_locks.hold((engine.id, adapter.lora_id)):
                    await self._load(engine, adapter, "reloaded")
            except TuneplexError as exc:
                log.warning("engine %s: could not reload %s: %s", engine.id, adapter.ref, exc)
        log.info("engine %s: %d adapters resident (%d reloaded)",
                 engine.id, len(loras), len(lost))

    # -- loading and unloading ---------------------------------------------------------------

    async def _load(self, engine: Engine, adapter: AdapterVersion, result: str) -> None:
        loading = self._loading.setdefault(engine.id, {})
        loading[adapter.lora_id] = adapter
        try:
            entry = await self._cache.local_copy(self._registry, "adapter", adapter.ref,
                                                 adapter.cache_key, self.cache_keys)
            await self._make_room(engine)
            start = time.perf_counter()
            await self._post_load(engine, adapter, entry.path)
            metrics.ADAPTER_LOAD_DURATION.labels(phase="load").observe(time.perf_counter() - start)
        except TuneplexError:
            metrics.ADAPTER_LOADS.labels(result="failed").inc()
            raise
        finally:
            loading.pop(adapter.lora_id, None)
        self._resident.setdefault(engine.id, OrderedDict())[adapter.lora_id] = adapter
        metrics.ADAPTER_LOADS.labels(result=result).inc()
        log.info("engine %s: %s %s as %s", engine.id, result, adapter.ref, adapter.lora_id)

    async def _post_load(self, engine: Engine, adapter: AdapterVersion, path: Path) -> None:
        body = {"lora_name": adapter.lora_id, "lora_path": str(path)}
        try:
            resp = await engine.http().post("/v1/load_lora_adapter", json=body, timeout=120.0)
        except httpx.HTTPError as exc:
            raise Unavailable(f"engine {engine.id} unreachable while loading an adapter") from exc
        if resp.status_code == 200:
            return
        message = _upstream_message(resp)
        # vLLM answers "already loaded" with the same 400 InvalidUserInput as a malformed load,
        # told apart only by its text. The engine's own listing decides instead: an attached
        # engine may have kept this id across a gateway restart, which is then as good as a
        # load (the id includes the content hash, so it is these very weights).
        if resp.status_code == 400 and adapter.lora_id in await self._registered(engine):
            return
        if resp.status_code == 404:
            log.error("engine %s cannot read %s: attached engines must mount the gateway's "
                      "cache_dir at the same path", engine.id, path)
            raise FailedPrecondition(
                f"engine {engine.id} cannot read the gateway's adapter cache: attached engines "
                "must mount the gateway's cache_dir at the same path")
        if resp.status_code >= 500 and not await engine.healthy():
            raise Unavailable(f"engine {engine.id} went down while loading {adapter.ref}")
        raise FailedPrecondition(
            f"vLLM could not load adapter {adapter.ref}: {message}; {export_hint(adapter.ref)}.",
            param="model", code="adapter_not_servable")

    async def _registered(self, engine: Engine) -> set[str]:
        """The adapter ids the engine itself lists (`/v1/models` cards with a parent)."""
        try:
            cards = await engine.models()
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise Unavailable(f"engine {engine.id} did not list its models") from exc
        return {c["id"] for c in cards if c.get("parent")}

    async def _make_room(self, engine: Engine) -> None:
        """Unload least recently used adapters until one more fits in the engine's capacity.
        Adapters requests are being handed to are skipped; if only those are left the engine
        goes over capacity for a moment (vLLM then re-reads from disk) rather than failing."""
        loras = self._resident.setdefault(engine.id, OrderedDict())
        pending = len(self._loading.get(engine.id, ()))
        excess = len(loras) + pending - self._capacity
        # Chosen without awaiting, so two concurrent loads cannot pick the same victim.
        victims: list[AdapterVersion] = []
        for lora_id in list(loras):
            if len(victims) >= excess:
                break
            if not self._users[(engine.id, lora_id)]:
                victims.append(loras.pop(lora_id))
        for victim in victims:
            with contextlib.suppress(httpx.HTTPError):
                await engine.http().post("/v1/unload_lora_adapter",
                                         json={"lora_name": victim.lora_id}, timeout=30.0)
            metrics.ADAPTER_UNLOADS.inc()
            log.info("engine %s: unloaded %s to make room", engine.id, victim.ref)


def _place_after(loras: OrderedDict[str, AdapterVersion], lora_id: str, anchor: str) -> None:
    """Move `lora_id` (just loaded: the most recent) to right after `anchor` in LRU order; left
    where it is when `anchor` is gone."""
    if anchor not in loras:
        return
    order = list(loras)
    for later in order[order.index(anchor) + 1:]:
        if later != lora_id:
            loras.move_to_end(later)


def _upstream_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:500]
