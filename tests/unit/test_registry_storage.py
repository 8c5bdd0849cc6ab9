import hashlib
import os
import sqlite3
import time

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.registry.gc import collect_orphans
from services.registry.metadata import FileRow, MetadataStore, NewVersion
from services.registry.names import Ref
from services.registry.storage import LocalBlobStore, blob_key


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_local_put_get_roundtrip_in_chunks(tmp_path):
    store = LocalBlobStore(tmp_path)
    data = os.urandom(300_000)
    key = blob_key(sha(data))
    store.put(
        key,
        (data[i : i + 65536] for i in range(0, len(data), 65536)),
        size=len(data),
        sha256=sha(data),
    )
    assert store.exists(key)
    chunks = list(store.get(key, 100_000))
    assert b"".join(chunks) == data and max(map(len, chunks)) <= 100_000
    assert [b.key for b in store.list("blobs/")] == [key]
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(NotFound):
        store.get(key, 10)


@pytest.mark.parametrize("sent", [b"wrong bytes!", b"short", b"the expected bytes plus more"])
def test_local_put_mismatch_leaves_nothing(tmp_path, sent):
    store = LocalBlobStore(tmp_path)
    expected = b"the expected bytes"
    key = blob_key(sha(expected))
    with pytest.raises(InvalidArgument):
        store.put(key, [sent], size=len(expected), sha256=sha(expected))
    assert not store.exists(key)
    assert list(store.list("tmp/")) == []


def test_local_put_interrupted_leaves_nothing(tmp_path):
    store = LocalBlobStore(tmp_path)

    def broken():
        yield b"first half"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.put(blob_key("0" * 64), broken(), size=100, sha256="0" * 64)
    assert list(store.list("")) == []


def _publish(meta: MetadataStore, name: str, digest: str = "a" * 64, kind: str = "adapter"):
    return meta.publish(
        NewVersion(
            kind=kind,
            name=name,
            manifest_sha256="m" + digest[1:],
            total_size=1,
            files=[FileRow("f", 1, digest)],
        )
    )


def test_versions_are_numbered_immutable_and_aliases_move(tmp_path):
    meta = MetadataStore(tmp_path / "r.db")
    assert [_publish(meta, "x").version for _ in range(3)] == [1, 2, 3]
    assert meta.resolve("adapter", Ref("x")).version == 3
    meta.set_alias("adapter", "x", "prod", 1)
    meta.set_alias("adapter", "x", "prod", 2)
    assert meta.resolve("adapter", Ref("x", alias="prod")).version == 2
    with pytest.raises(FailedPrecondition, match="prod"):
        meta.delete("adapter", "x", 2)
    with pytest.raises(NotFound):
        meta.set_alias("adapter", "x", "prod", 9)
    raw = sqlite3.connect(tmp_path / "r.db")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        raw.execute("UPDATE versions SET description = 'changed'")
    raw.close()
    meta.close()
    reopened = MetadataStore(tmp_path / "r.db")  # migrations are applied once
    assert reopened.resolve("adapter", Ref("x", version=1)).version == 1


def test_gc_removes_old_orphans_only(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    meta = MetadataStore(tmp_path / "r.db")
    kept, orphan = b"kept", b"orphan"
    for data in (kept, orphan):
        store.put(blob_key(sha(data)), [data], size=len(data), sha256=sha(data))
    _publish(meta, "x", sha(kept))
    young = collect_orphans(store, meta, grace_seconds=3600)
    assert (young.deleted, young.kept_young) == (0, 1)
    report = collect_orphans(store, meta, grace_seconds=3600, now=time.time() + 7200)
    assert report.deleted == 1
    assert store.exists(blob_key(sha(kept))) and not store.exists(blob_key(sha(orphan)))
