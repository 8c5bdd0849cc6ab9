"""AdapterResolver: a request's `model` -> base model or adapter version -> verified local
copy -> registered in a vLLM engine under an id that includes version and content hash.

Found-but-unservable (DoRA, modules_to_save, too high a rank, another base) is a 400 that says
how to serve it anyway; not found is a 404. Locks are per key, so 20 concurrent first requests
for one adapter fetch and load it once while other adapters proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TuneplexError,
    Unavailable,
)
from services.gateway import metrics
from services.gateway.cache import ArtifactCache, CacheEntry, manifest_files
from services.gateway.engines import Engine
from services.gateway.models import AdapterVersion, ResolvedModel, ServedBase
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# `name@7` never changes meaning, but it can be deleted: look again now and then.
_PINNED_VERSION_TTL_S = 60.0


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._users: Counter[Hashable] = Counter()

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


@dataclass
class _Resolution:
    adapter: AdapterVersion
    at: float


def _is_pinned_version(ref: str) -> bool:
    return ref.partition("@")[2].isdigit()


def _export_hint(ref: str) -> str:
    return (f"export a merged model instead (`tuneplex export {ref} --name NEW-NAME`) and "
            "serve it as a base model (TUNEPLEX_GATEWAY_BASE_MODELS)")


class AdapterResolver:
    def __init__(self, settings: GatewaySettings, registry: Any, cache: ArtifactCache):
        self._settings = settings
        self._registry = registry
        self._cache = cache
        self.bases: dict[str, ServedBase] = {}
        self._resolved: dict[str, _Resolution] = {}
        self._fetch_locks = KeyedLocks()
        self._load_locks = KeyedLocks()
        self._loading: dict[str, set[str]] = {}  # engine id -> lora ids being loaded

    # -- base models -------------------------------------------------------------------------

    async def prepare_bases(self) -> list[ServedBase]:
        """Turn each configured base into a local folder: a path as is, a registry ref pulled
        into the cache (sha256-verified, reused across restarts)."""
        for ref in self._settings.base_models:
            path = Path(ref).expanduser()
            if "/" in ref or path.is_dir():
                if not (path / "config.json").is_file():
                    raise FailedPrecondition(f"base model folder {path} has no config.json")
                base = ServedBase(name=path.name, path=path.resolve())
            else:
                version = await self._registry.resolve("model", ref)
                entry = await self._local_copy("model", version.name, version.version,
                                               version.manifest.sha256, manifest_files(version))
                base = ServedBase(version.name, entry.path, version.version, entry.key)
            self.bases[base.name] = base
        return list(self.bases.values())

    def _base_named(self, model: str) -> ServedBase | None:
        if model in self.bases:
            return self.bases[model]
        name, _, version = model.partition("@")
        base = self.bases.get(name)
        return base if base is not None and version == str(base.version) else None

    # -- resolving ---------------------------------------------------------------------------

    async def resolve(self, model: str) -> ResolvedModel:
        base = self._base_named(model)
        if base is not None:
            return ResolvedModel(base)
        adapter = await self._resolve_adapter(model)
        return ResolvedModel(self._base_for(adapter), adapter)

    async def _resolve_adapter(self, ref: str) -> AdapterVersion:
        ttl = _PINNED_VERSION_TTL_S if _is_pinned_version(ref) else self._settings.resolve_ttl_s
        cached = self._resolved.get(ref)
        now = time.monotonic()
        if cached is not None and now - cached.at < ttl:
            return cached.adapter
        try:
            version = await self._registry.resolve("adapter", ref)
        except (NotFound, InvalidArgument):
            self._resolved.pop(ref, None)
            raise NotFound(
                f"The model '{ref}' does not exist: it is neither a served base model "
                f"({', '.join(sorted(self.bases))}) nor an adapter in the registry.",
                param="model", code="model_not_found",
            ) from None
        except Unavailable:
            if cached is None:
                raise
            # Keep serving what the name meant a moment ago rather than failing every request.
            log.warning("registry unavailable; serving %s as %s", ref, cached.adapter.ref)
            return cached.adapter
        adapter = self._check_servable(ref, version)
        self._resolved[ref] = _Resolution(adapter, now)
        return adapter

    def _check_servable(self, ref: str, version: Any) -> AdapterVersion:
        if version.WhichOneof("info") != "adapter":
            raise FailedPrecondition(f"'{ref}' is not an adapter", param="model")
        info = version.adapter
        exact = f"{version.name}@{version.version}"
        problem = None
        if info.peft_type and info.peft_type.upper() != "LORA":
            problem = f"is a {info.peft_type} adapter; vLLM serves LoRA adapters only"
        elif info.use_dora:
            problem = "uses DoRA, which vLLM cannot load as a runtime adapter"
        elif info.modules_to_save:
            problem = (f"trains full copies of {', '.join(info.modules_to_save)} "
                       "(modules_to_save), which vLLM cannot load as a runtime adapter")
        elif info.rank > self._settings.max_lora_rank:
            problem = (f"has rank {info.rank}, above this gateway's max_lora_rank "
                       f"{self._settings.max_lora_rank} (TUNEPLEX_GATEWAY_MAX_LORA_RANK)")
        if problem:
            raise FailedPrecondition(f"adapter {exact} {problem}: {_export_hint(exact)}.",
                                     param="model", code="adapter_not_servable")
        return AdapterVersion(version.name, version.version, version.manifest.sha256,
                              info.base_model, manifest_files(version))

    def _base_for(self, adapter: AdapterVersion) -> ServedBase:
        for base in self.bases.values():
            if base.accepts(adapter.base_ref):
                return base
        served = ", ".join(b.ref for b in self.bases.values())
        raise FailedPrecondition(
            f"adapter {adapter.ref} was trained on {adapter.base_ref}, but this gateway serves "
            f"{served}: serve that base model, or {_export_hint(adapter.ref)}.",
            param="model", code="adapter_base_mismatch",
        )

    async def servable_adapters(self) -> list[tuple[Any, ServedBase]]:
        """Every adapter whose latest version this gateway can serve, with its base."""
        out = []
        for artifact in await self._registry.list("adapter"):
            try:
                adapter = self._check_servable(artifact.name, artifact.latest)
                out.append((artifact, self._base_for(adapter)))
            except FailedPrecondition:
                continue
        return out

    # -- local copies ------------------------------------------------------------------------

    async def _local_copy(self, kind: str, name: str, version: int, key: str,
                          files: list[dict]) -> CacheEntry:
        """The cached, sha256-verified folder of one version; fetched when missing or corrupt."""
        async with self._fetch_locks.hold(key):
            entry = self._cache.lookup(key)
            if entry is not None:
                metrics.CACHE_HITS.inc()
                try:
                    await self._timed("verify", self._cache.verify(entry))
                    return entry
                except DataLoss:
                    pass  # evicted by verify(); fetch a good copy below
            metrics.CACHE_MISSES.inc()
            entry = await self._timed(
                "fetch", self._cache.fetch(self._registry, kind, f"{name}@{version}", key))
            await self._timed("verify", self._cache.verify(entry))
            return entry

    @staticmethod
    async def _timed(phase: str, awaitable: Any) -> Any:
        start = time.perf_counter()
        result = await awaitable
        metrics.ADAPTER_LOAD_DURATION.labels(phase=phase).observe(time.perf_counter() - start)
        return result

    def in_use(self) -> set[str]:
        """Cache keys engines use now (set by the app once engines exist)."""
        return {b.cache_key for b in self.bases.values() if b.cache_key}

    # -- engines -----------------------------------------------------------------------------

    async def ensure_loaded(self, engine: Engine, adapter: AdapterVersion) -> None:
        if adapter.lora_id in engine.adapters:
            engine.adapters.move_to_end(adapter.lora_id)
            return
        async with self._load_locks.hold((engine.id, adapter.lora_id)):
            if adapter.lora_id in engine.adapters:  # loaded while we waited for the lock
                engine.adapters.move_to_end(adapter.lora_id)
                return
            await self._load(engine, adapter, "loaded")

    async def reload(self, engine: Engine, had: list[AdapterVersion]) -> None:
        """After an engine (re)start: put back the adapters it had, least recently used first
        so the LRU order survives. One that cannot come back is dropped, not fatal."""
        for adapter in had:
            if adapter.lora_id in engine.adapters:
                continue
            try:
                await self._load(engine, adapter, "reloaded")
            except TuneplexError as exc:
                log.warning("engine %s: could not reload %s: %s", engine.id, adapter.ref, exc)

    def forget(self, engine: Engine, adapter: AdapterVersion) -> None:
        """The engine answered that it does not know this adapter (it restarted behind our
        back): stop believing it is there."""
        engine.adapters.pop(adapter.lora_id, None)

    async def _load(self, engine: Engine, adapter: AdapterVersion, result: str) -> None:
        loading = self._loading.setdefault(engine.id, set())
        loading.add(adapter.lora_id)
        try:
            entry = await self._local_copy("adapter", adapter.name, adapter.version,
                                           adapter.cache_key, adapter.files)
            await self._make_room(engine)
            start = time.perf_counter()
            await self._post_load(engine, adapter, entry.path)
            metrics.ADAPTER_LOAD_DURATION.labels(phase="load").observe(time.perf_counter() - start)
        except TuneplexError:
            metrics.ADAPTER_LOADS.labels(result="failed").inc()
            raise
        finally:
            loading.discard(adapter.lora_id)
        engine.adapters[adapter.lora_id] = adapter
        metrics.ADAPTER_LOADS.labels(result=result).inc()
        log.info("engine %s: %s %s as %s", engine.id, result, adapter.ref, adapter.lora_id)

    async def _post_load(self, engine: Engine, adapter: AdapterVersion, path: Path) -> None:
        assert engine.client is not None
        body = {"lora_name": adapter.lora_id, "lora_path": str(path)}
        try:
            resp = await engine.client.post("/v1/load_lora_adapter", json=body, timeout=120.0)
        except httpx.HTTPError as exc:
            raise Unavailable(f"engine {engine.id} unreachable while loading an adapter") from exc
        if resp.status_code == 200:
            return
        message = _upstream_message(resp)
        if resp.status_code == 400 and "already been loaded" in message:
            return  # an attached engine kept it across our restart
        if resp.status_code == 404:
            raise FailedPrecondition(
                f"engine {engine.id} cannot read the adapter cache at {path}: attached engines "
                "must mount the gateway's cache_dir at the same path")
        if resp.status_code >= 500 and not await engine.healthy():
            raise Unavailable(f"engine {engine.id} went down while loading {adapter.ref}")
        raise FailedPrecondition(
            f"vLLM could not load adapter {adapter.ref}: {message}; {_export_hint(adapter.ref)}.",
            param="model", code="adapter_not_servable")

    async def _make_room(self, engine: Engine) -> None:
        """Unload least recently used adapters until one more fits in the engine's memory
        cache (max_cpu_loras): past it vLLM would thrash re-reading adapters from disk."""
        capacity = self._settings.adapter_capacity
        pending = len(self._loading.get(engine.id, ()))
        victims = []
        # Chosen without awaiting, so two concurrent loads cannot pick the same victim.
        while engine.adapters and len(engine.adapters) + pending > capacity:
            victims.append(engine.adapters.popitem(last=False)[1])
        for victim in victims:
            assert engine.client is not None
            with contextlib.suppress(httpx.HTTPError):
                await engine.client.post("/v1/unload_lora_adapter",
                                         json={"lora_name": victim.lora_id}, timeout=30.0)
            metrics.ADAPTER_UNLOADS.inc()
            log.info("engine %s: unloaded %s to make room", engine.id, victim.ref)


def _upstream_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:500]
