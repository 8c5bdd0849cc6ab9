"""Presigned GET URLs for direct downloads (``GetDownloadUrls``): on S3 a client fetches a
version's blobs straight from object storage, the way container registries redirect blob pulls
to storage, while the registry stays the authority on which bytes a version holds (the
manifest's sha256, which the client checks before a file becomes visible).

A URL is a bearer token for its lifetime, so it is short (``direct_url_expiry_seconds``), only
answered to a caller the gRPC interceptor authenticated, and never logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.registry.metadata import FileRow
from services.registry.settings import RegistrySettings
from services.registry.storage import BlobStore, S3BlobStore, blob_key


@dataclass(frozen=True)
class FileUrl:
    path: str
    url: str
    expire_time: datetime  # UTC


class DirectDownloads:
    """Signs GET URLs of blobs when the store is S3 and direct transfers are on; otherwise
    ``enabled`` is False and clients stream through the registry."""

    def __init__(self, store: BlobStore, settings: RegistrySettings):
        # Only S3 has URLs a client can reach; a local blob directory is the registry's own.
        self._store = (
            store if settings.direct_transfers and isinstance(store, S3BlobStore) else None
        )
        self._lifetime = timedelta(seconds=settings.direct_url_expiry_seconds)

    @property
    def enabled(self) -> bool:
        return self._store is not None

    def urls(self, files: Sequence[FileRow]) -> list[FileUrl]:
        """One URL per file, in the order given. Blocking (the SDK may look up the bucket's
        region once); call it from a worker thread."""
        if self._store is None:
            return []
        # Taken before signing, so the time announced is never later than the one signed.
        expire_time = datetime.now(UTC) + self._lifetime
        return [
            FileUrl(
                f.path, self._store.presigned_get(blob_key(f.sha256), self._lifetime), expire_time
            )
            for f in files
        ]
