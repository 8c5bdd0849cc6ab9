"""VerifiedDiskCache: local copies of registry artifacts (adapters and base models), keyed by
manifest sha256 and checked against it before every use.

A version's manifest sha256 pins every byte of it, so the key never goes stale: a re-pushed
version or a moved alias simply names another key. Entries are written to a temporary folder
and renamed into place, so a crash never leaves a half-written entry that looks complete.
Entries an engine is using are never evicted: vLLM may re-read an adapter's files from disk when it
drops it from its own memory cache, so they must stay. Which entries those are is not the
cache's to know: each caller passes an `in_use` view of what it owns (served bases, adapters
resident in engines), asked at the moment room is made.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from services.common.errors import DataLoss, FailedPrecondition
from services.gateway import metrics
from services.gateway.keyed_locks import KeyedLocks
from services.gateway.registry_reader import RegistryReader

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".manifest.json"

InUse = Callable[[], Collection[str]]
_T = TypeVar("_T")

# A version whose files cannot exist as a folder here (a name too long, a file where a folder
# must go) fails the same way on every try; a full or read-only disk may not.
_LAYOUT_ERRNOS = {errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EINVAL}
_LAYOUT_CODES = {"file_layout_invalid"}


def _nothing_in_use() -> Collection[str]:
    return ()


@dataclass
class CacheEntry:
    key: str
    path: Path
    files: list[dict[str, Any]]  # path, size_bytes, sha256
    size_bytes: int
    last_used: float = field(default_factory=time.monotonic)


def manifest_files(version: Any) -> list[dict[str, Any]]:
    return [
        {"path": f.path, "size_bytes": f.size_bytes, "sha256": f.sha256}
        for f in version.manifest.files
    ]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(root: Path, files: list[dict[str, Any]]) -> None:
    """Raise DataLoss unless every manifest file is present with its size and sha256."""
    for f in files:
        path = root / f["path"]
        if not path.is_file():
            raise DataLoss(f"cached file {f['path']} is missing")
        if path.stat().st_size != f["size_bytes"] or _sha256_file(path) != f["sha256"]:
            raise DataLoss(f"cached file {f['path']} does not match its sha256")


async def _timed(phase: str, awaitable: Awaitable[_T]) -> _T:
    start = time.perf_counter()
    result = await awaitable
    metrics.ADAPTER_LOAD_DURATION.labels(phase=phase).observe(time.perf_counter() - start)
    return result


class VerifiedDiskCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._unservable: dict[str, str] = {}  # key -> why its files cannot be written here
        self._fetch_locks = KeyedLocks()
        self.root.mkdir(parents=True, exist_ok=True)
        self._scan()

    def _scan(self) -> None:
        """Adopt entries a previous run left, oldest first; drop unfinished temporary folders."""
        for tmp in self.root.glob(".*"):  # our .tmp-* folders and the pull's staging
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
        markers = sorted(self.root.glob(f"*{MARKER_SUFFIX}"), key=lambda p: p.stat().st_mtime)
        for marker in markers:
            key = marker.name[: -len(MARKER_SUFFIX)]
            path = self.root / key
            try:
                files = json.loads(marker.read_text())["files"]
            except (OSError, ValueError, KeyError):
                files = None
            if files is None or not path.is_dir():
                marker.unlink(missing_ok=True)
                shutil.rmtree(path, ignore_errors=True)
                continue
            size = sum(f["size_bytes"] for f in files)
            self._entries[key] = CacheEntry(key, path, files, size)
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
            entry = await _timed("fetch", self.fetch(registry, kind, ref, key, in_use))
            await _timed("verify", self.verify(entry))
            return entry

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
        tmp = self.root / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
        try:
            version = await registry.pull(kind, ref, tmp)
            if version.manifest.sha256 != key:
                raise DataLoss(f"{ref} changed while it was being fetched; retry")
            files = manifest_files(version)
            size = sum(f["size_bytes"] for f in files)
            self._make_room(size, set(in_use()))
            dest = self.root / key
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        (self.root / f"{key}{MARKER_SUFFIX}").write_text(json.dumps({"ref": ref, "files": files}))
        entry = CacheEntry(key, dest, files, size)
        self._entries[key] = entry
        self._update_gauge()
        return entry

    async def verify(self, entry: CacheEntry) -> None:
        """sha256 of every file, off the event loop; a bad entry is evicted before raising so
        the caller can fetch it again."""
        try:
            await asyncio.to_thread(verify_files, entry.path, entry.files)
        except DataLoss:
            log.warning("cache entry %s is corrupt; evicting it", entry.key)
            self.evict(entry.key, reason="corrupt")
            raise

    def evict(self, key: str, reason: str) -> None:
        entry = self._entries.pop(key, None)
        (self.root / f"{key}{MARKER_SUFFIX}").unlink(missing_ok=True)
        shutil.rmtree(self.root / key, ignore_errors=True)
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
