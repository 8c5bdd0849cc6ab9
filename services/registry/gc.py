"""Collection of orphans: blobs and manifests no version refers to any more (a deleted
version, an upload that failed or was killed half-way), and temp files a crash left.

Only objects older than a grace period go. An upload writes its blobs before it publishes
the row that refers to them, so a young unreferenced blob may belong to an upload in flight;
uploads always rewrite their blobs (see ``ArtifactRegistry._store_file``), so an upload
shorter than the grace period never loses one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from services.registry.metadata import MetadataStore
from services.registry.storage import TMP_PREFIX, BlobStore

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    deleted: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0


def collect_orphans(
    store: BlobStore, metadata: MetadataStore, grace_seconds: float, now: float | None = None
) -> GcReport:
    # References are read before listing: anything published after this read was written
    # after it too, so it is younger than the grace period when the listing sees it.
    files, manifests = metadata.referenced_keys()
    now = time.time() if now is None else now
    report = GcReport()
    for prefix, referenced in (("blobs/", files), ("manifests/", manifests), (TMP_PREFIX, set())):
        for obj in store.list(prefix):
            digest = obj.key.rsplit("/", 1)[-1].removesuffix(".json")
            if digest in referenced:
                continue
            if now - obj.modified < grace_seconds:
                report.kept_young += 1
                continue
            store.delete(obj.key)
            report.deleted += 1
            report.deleted_bytes += obj.size
    if report.deleted:
        log.info("gc: deleted %d orphan objects (%d bytes)", report.deleted, report.deleted_bytes)
    return report


async def run_gc_forever(
    store: BlobStore, metadata: MetadataStore, grace_seconds: float, interval_seconds: float
) -> None:
    """Collect at startup, then every ``interval_seconds`` (0: only at startup)."""
    while True:
        try:
            await asyncio.to_thread(collect_orphans, store, metadata, grace_seconds)
        except Exception:  # noqa: BLE001 - a failed sweep is retried next time, never fatal
            log.exception("gc sweep failed")
        if interval_seconds <= 0:
            return
        await asyncio.sleep(interval_seconds)
