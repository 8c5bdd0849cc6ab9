"""VerifiedDiskCache: content-addressed entries, sha256 verification, LRU by bytes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from services.common.errors import DataLoss
from services.common.stubs import registry_pb2
from services.gateway.cache import CacheEntry, VerifiedDiskCache
from services.gateway.registry_reader import RegistryReader


class FolderRegistry:
    """Stands in for the registry's pull: writes given files, returns their manifest."""

    def __init__(self, files: dict[str, dict[str, bytes]]):
        self.files = files
        self.pulls = 0

    def version(self, ref: str) -> registry_pb2.ArtifactVersion:
        entries = [registry_pb2.FileEntry(path=p, size_bytes=len(b),
                                          sha256=hashlib.sha256(b).hexdigest())
                   for p, b in self.files[ref].items()]
        digest = hashlib.sha256(json.dumps([e.sha256 for e in entries]).encode()).hexdigest()
        return registry_pb2.ArtifactVersion(
            name=ref, manifest=registry_pb2.Manifest(files=entries, sha256=digest))

    async def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        return self.version(ref)

    async def list(self, kind: str | None = None) -> list[registry_pb2.Artifact]:
        return [registry_pb2.Artifact(name=ref, latest=self.version(ref)) for ref in self.files]

    async def pull(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        self.pulls += 1
        dest.mkdir(parents=True, exist_ok=True)
        for path, data in self.files[ref].items():
            (dest / path).write_bytes(data)
        return self.version(ref)


def _fetch(
    cache: VerifiedDiskCache, registry: FolderRegistry, ref: str, in_use=frozenset
) -> CacheEntry:
    key = registry.version(ref).manifest.sha256
    return asyncio.run(cache.fetch(registry, "adapter", ref, key, in_use))


def test_the_fake_registry_is_a_registry_reader():
    assert isinstance(FolderRegistry({}), RegistryReader)


def test_fetch_verify_and_detect_corruption(tmp_path):
    registry = FolderRegistry({"a@1": {"adapter_model.safetensors": b"x" * 100,
                                       "adapter_config.json": b"{}"}})
    cache = VerifiedDiskCache(tmp_path, max_bytes=10_000)
    entry = _fetch(cache, registry, "a@1")
    asyncio.run(cache.verify(entry))
    assert cache.lookup(entry.key) is entry

    (entry.path / "adapter_model.safetensors").write_bytes(b"y" * 100)  # same size, new bytes
    with pytest.raises(DataLoss):
        asyncio.run(cache.verify(entry))
    assert cache.lookup(entry.key) is None
    assert not entry.path.exists()


def test_missing_file_is_corruption(tmp_path):
    registry = FolderRegistry({"a@1": {"w.bin": b"abc"}})
    cache = VerifiedDiskCache(tmp_path, max_bytes=10_000)
    entry = _fetch(cache, registry, "a@1")
    (entry.path / "w.bin").unlink()
    with pytest.raises(DataLoss):
        asyncio.run(cache.verify(entry))


def test_lru_eviction_by_bytes_spares_entries_in_use(tmp_path):
    registry = FolderRegistry({f"a@{i}": {"w.bin": bytes([i]) * 400} for i in range(4)})
    in_use: set[str] = set()
    cache = VerifiedDiskCache(tmp_path, max_bytes=1000)
    first, second = _fetch(cache, registry, "a@0"), _fetch(cache, registry, "a@1")
    in_use.add(first.key)  # an engine serves it: never evicted
    third = _fetch(cache, registry, "a@2", in_use=lambda: in_use)
    assert cache.lookup(first.key) and cache.lookup(third.key)
    assert cache.lookup(second.key) is None  # least recently used and not in use
    cache.lookup(first.key)
    in_use.clear()
    cache.lookup(third.key)  # now `first` is the least recently used
    _fetch(cache, registry, "a@3", in_use=lambda: in_use)
    assert cache.lookup(first.key) is None
    assert cache.total_bytes <= 1000


def test_a_restart_adopts_complete_entries_and_drops_partial_ones(tmp_path):
    registry = FolderRegistry({"a@1": {"w.bin": b"abc"}})
    entry = _fetch(VerifiedDiskCache(tmp_path, max_bytes=10_000), registry, "a@1")
    leftover = tmp_path / f".tmp-{'ab' * 32}-1234"  # a download killed half-way
    leftover.mkdir()
    (tmp_path / "orphan").mkdir()  # a folder without its manifest marker is not an entry

    cache = VerifiedDiskCache(tmp_path, max_bytes=10_000)
    adopted = cache.lookup(entry.key)
    assert adopted is not None and adopted.size_bytes == 3
    asyncio.run(cache.verify(adopted))
    assert not leftover.exists()
    assert cache.lookup("orphan") is None


def test_local_copy_reuses_a_good_entry_and_fetches_a_corrupt_one_again(tmp_path):
    registry = FolderRegistry({"a@1": {"w.bin": b"abc"}})
    cache = VerifiedDiskCache(tmp_path, max_bytes=10_000)
    key = registry.version("a@1").manifest.sha256

    async def scenario():
        first = await cache.local_copy(registry, "adapter", "a@1", key)
        again = await cache.local_copy(registry, "adapter", "a@1", key)
        (first.path / "w.bin").write_bytes(b"abd")
        healed = await cache.local_copy(registry, "adapter", "a@1", key)
        return first, again, healed

    first, again, healed = asyncio.run(scenario())
    assert again is first and registry.pulls == 2
    assert (healed.path / "w.bin").read_bytes() == b"abc"


def test_replicas_on_a_shared_folder_reuse_each_others_entries(tmp_path):
    """Two gateways on one volume (the kubernetes layout): the second adopts what the first
    wrote after it started instead of pulling and replacing files an engine may be reading."""
    registry = FolderRegistry({"a@1": {"w.bin": b"abc"}})
    key = registry.version("a@1").manifest.sha256
    first, second = (VerifiedDiskCache(tmp_path, max_bytes=10_000) for _ in range(2))
    written = asyncio.run(first.local_copy(registry, "adapter", "a@1", key))
    adopted = asyncio.run(second.local_copy(registry, "adapter", "a@1", key))
    assert registry.pulls == 1 and adopted.path == written.path


def test_a_restart_keeps_a_download_another_replica_has_in_flight(tmp_path):
    from services.client.artifact_cache import ArtifactCache

    store = ArtifactCache(tmp_path)
    key = "cd" * 32
    in_flight = store.staging(key)
    in_flight.mkdir()
    with store.lock(key):
        VerifiedDiskCache(tmp_path, max_bytes=10_000)
        assert in_flight.exists()
    VerifiedDiskCache(tmp_path, max_bytes=10_000)  # once its writer is gone, it is swept
    assert not in_flight.exists()


def test_a_cold_copy_is_timed_as_one_fetch_and_one_verify(tmp_path):
    """The load-duration histogram's phases (fetch, verify; vLLM's load is the engine's): a
    cold copy is one of each, a warm one one verify. The e2e warm-promotion test counts them."""
    from prometheus_client import REGISTRY

    def count(phase: str) -> float:
        name = "gateway_adapter_load_duration_seconds_count"
        return REGISTRY.get_sample_value(name, {"phase": phase}) or 0.0

    registry = FolderRegistry({"a@1": {"w.bin": b"abc"}})
    cache = VerifiedDiskCache(tmp_path, max_bytes=10_000)
    key = registry.version("a@1").manifest.sha256
    before = {phase: count(phase) for phase in ("fetch", "verify")}
    asyncio.run(cache.local_copy(registry, "adapter", "a@1", key))
    assert {p: count(p) - n for p, n in before.items()} == {"fetch": 1, "verify": 1}
    asyncio.run(cache.local_copy(registry, "adapter", "a@1", key))
    assert {p: count(p) - n for p, n in before.items()} == {"fetch": 1, "verify": 2}
