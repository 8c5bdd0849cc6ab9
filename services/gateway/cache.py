"""VerifiedDiskCache: the gateway's layer over the shared verified artifact cache
(`services/client/artifact_cache.py`: keyed by manifest sha256, every file checked against the
manifest before every use, downloads renamed into place only once verified). This layer adds
what only the gateway needs: a byte budget with LRU eviction, one fetch per key at a time in
the event loop, metrics, and versions remembered as unservable here.

Entries an engine is using are never evicted: vLLM may re-read an adapter's files from disk when it
drops it from its own memory cache, so they must stay. Which entries those are is not the
cache's to know: each caller passes an `in_use` view of what it owns (served bases, adapters
resident in engines), asked at the moment room is made.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.client.artifact_cache import (
    ArtifactCache,
    CachedVersion,
    KeyLock,
    manifest_files,
)
from services.common.errors import DataLoss, FailedPrecondition
from services.gateway import metrics
from services.gateway.keyed_locks import KeyedLocks
from services.gateway.registry_reader import RegistryReader

__all__ = ["CacheEntry", "InUse", "VerifiedDiskCache", "manifest_files"]

log = logging.getLogger(__name__)

InUse = Callable[[], Collection[str]]
_T = TypeVar("_T")

# A version whose files cannot exist as a folder here (a name too long, a file where a folder
# must go) fails the same way on every try; a full or read-only disk may not.
_LAYOUT_ERRNOS = {errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EINVAL}
_LAYOUT_CODES = {"file_layout_invalid"}


def _nothing_in_use() -> Collection[str]:
    return ()


@dataclass
class CacheEntry(CachedVersion):
    last_used: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, found: CachedVersion) -> CacheEntry:
        return cls(found.key, found.path, found.files, found.size_bytes)


async def _timed(phase: str, awaitable: Awaitable[_T]) -> _T:
    start = time.perf_counter()
    result = await awaitable
    metrics.ADAPTER_LOAD_DURATION.labels(phase=phase).observe(time.perf_counter() - start)
    return result


async def _acquire(lock: KeyLock) -> None:
    """Take a key's file lock without blocking the event loop while another process holds it,
    and without leaking it when the waiting request is cancelled."""
    if lock.acquire(blocking=False):
        return
    waiting = asyncio.ensure_future(asyncio.to_thread(lock.acquire))
    try:
        await asyncio.shield(waiting)
    except asyncio.CancelledError:
        waiting.add_done_callback(lambda _: lock.release())
        raise


class VerifiedDiskCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        self._store = ArtifactCache(root)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._unservable: dict[str, str] = {}  # key -> why its files cannot be written here
        self._fetch_locks = KeyedLocks()
        self._scan()

    def _scan(self) -> None:
        """Adopt entries a previous run left, oldest first; drop unfinished downloads."""
        self._store.sweep_staging()
        for found in self._store.entries():
            self._entries[found.key] = CacheEntry.of(found)
        self._update_gauge()

    @property
    def total_bytes(self) -> int:
        return sum(e.size_bytes for e in self._entries.values())

    def _update_gauge(self) -> None:
        metrics.CACHE_BYTES.set(self.total_bytes)

    def lookup(self, key: str) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_used = time.monotonic()
            self._entries.move_to_end(key)
        return entry

    async def local_copy(self, registry: RegistryReader, kind: str, ref: str, key: str,
                         in_use: InUse = _nothing_in_use) -> CacheEntry:
        """The cached, sha256-verified folder of one version (`ref` is `name@version`, `key`
        its manifest sha256); fetched when missing or corrupt. One fetch per key at a time."""
        async with self._fetch_locks.hold(key):
            entry = self.lookup(key)
            if entry is not None:
                metrics.CACHE_HITS.inc()
                try:
                    await _timed("verify", self.verify(entry))
                    return entry
                except DataLoss:
                    pass  # evicted by verify(); fetch a good copy below
            metrics.CACHE_MISSES.inc()
            # A fetched entry is verified before it is renamed into place (`_download` times
            # the two phases): no second pass over its files.
            return await self.fetch(registry, kind, ref, key, in_use)

    def unservable(self, key: str) -> str | None:
        """Why the version with this key cannot be materialised here, if a fetch found out."""
        return self._unservable.get(key)

    async def fetch(self, registry: RegistryReader, kind: str, ref: str, key: str,
                    in_use: InUse = _nothing_in_use) -> CacheEntry:
        """Download a version from the registry (which checks each file's sha256 as it
        streams) into the cache, evicting least recently used entries not `in_use`. Callers
        serialise fetches of one key (local_copy does). A version that cannot be written to
        disk is a clean FailedPrecondition (the cache stays as it was), remembered when it
        would fail the same way again."""
        try:
            return await self._fetch(registry, kind, ref, key, in_use)
        except FailedPrecondition as exc:
            if exc.code in _LAYOUT_CODES:
                self._unservable[key] = exc.message
            raise FailedPrecondition(f"{ref} cannot be served: {exc.message}", param="model",
                                     code="adapter_not_servable") from None
        except OSError as exc:
            log.error("cache: cannot write %s (%s) into %s: %s", ref, key, self.root, exc)
            why = f"its files cannot be written to disk here ({exc.strerror or 'I/O error'})"
            if exc.errno in _LAYOUT_ERRNOS:
                self._unservable[key] = why
            raise FailedPrecondition(f"{ref} cannot be served: {why}", param="model",
                                     code="adapter_not_servable") from None

    async def _fetch(self, registry: RegistryReader, kind: str, ref: str, key: str,
                     in_use: InUse) -> CacheEntry:
        # The key's file lock too, so a second process on this folder (another replica on a
        # shared volume) never writes the same key at once; uncontended in one gateway.
        lock = self._store.lock(key)
        await _acquire(lock)
        try:
            # Another replica on the shared volume may have written it since our scan: use its
            # copy rather than replace files its engine may be reading.
            found = await asyncio.to_thread(self._store.verified_entry, key, ref)
            if found is None:
                found = await self._download(registry, kind, ref, key)
        finally:
            lock.release()
        self._entries.pop(key, None)
        self._make_room(found.size_bytes, set(in_use()))
        entry = CacheEntry.of(found)
        self._entries[key] = entry
        self._update_gauge()
        return entry

    async def _download(self, registry: RegistryReader, kind: str, ref: str,
                        key: str) -> CachedVersion:
        staged = self._store.staging(key)
        try:
            version = await _timed("fetch", registry.pull(kind, ref, staged))
            return await _timed(
                "verify", asyncio.to_thread(self._store.commit, key, staged, version, ref)
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, staged, True)

    async def verify(self, entry: CacheEntry) -> None:
        """sha256 of every file, off the event loop; a bad entry is evicted before raising so
        the caller can fetch it again."""
        try:
            await asyncio.to_thread(self._store.verify, entry)
        except DataLoss:
            log.warning("cache entry %s is corrupt; evicting it", entry.key)
            self.evict(entry.key, reason="corrupt")
            raise

    def evict(self, key: str, reason: str) -> None:
        entry = self._entries.pop(key, None)
        self._store.remove(key)
        if entry is not None:
            metrics.CACHE_EVICTIONS.labels(reason=reason).inc()
        self._update_gauge()

    def _make_room(self, incoming: int, in_use: set[str]) -> None:
        """Evict entries not in use, least recently used first, until `incoming` fits. An entry
        larger than the budget is still admitted: refusing it would make it unservable."""
        total = self.total_bytes
        for key in list(self._entries):
            if total + incoming <= self.max_bytes:
                break
            entry = self._entries[key]
            if key in in_use:
                continue
            total -= entry.size_bytes
            self.evict(key, reason="lru")
