"""Blob stores: one small interface, a local directory and S3-compatible object storage.

Every put computes sha256 while the bytes go by and makes the object visible only once all of
them are written and match the digest the caller expects, so a reader never sees a partial or
wrong object under a key: a temp file renamed into place locally, an S3 upload that is aborted
(never completed) when the digest does not match.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from services.common.errors import InvalidArgument, NotFound, Unavailable

TMP_PREFIX = "tmp/"


def blob_key(sha256: str) -> str:
    """Content address of a file's bytes; two levels keep directory listings short."""
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def manifest_key(sha256: str) -> str:
    return f"manifests/{sha256}.json"


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch


class BlobStore(Protocol):
    def put(self, key: str, chunks: Iterable[bytes], *, size: int, sha256: str) -> None:
        """Store the bytes of ``chunks`` under ``key``. Raises ``InvalidArgument`` (and stores
        nothing) unless they are exactly ``size`` bytes with digest ``sha256``."""

    def get(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        """The object's bytes in chunks; ``NotFound`` if there is none."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def list(self, prefix: str) -> Iterator[BlobInfo]: ...


class _Digest:
    """Counts and hashes bytes as they pass, and says whether they are the ones expected. Its
    messages never name the storage key (an internal detail): the caller names the file."""

    def __init__(self, key: str, size: int, sha256: str):
        self.key, self.size, self.sha256 = key, size, sha256
        self.hash = hashlib.sha256()
        self.seen = 0

    def update(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > self.size:
            raise InvalidArgument(f"more than the declared {self.size} bytes")
        self.hash.update(data)

    def check(self) -> None:
        if self.seen != self.size:
            raise InvalidArgument(f"got {self.seen} bytes, declared {self.size}")
        if self.hash.hexdigest() != self.sha256:
            raise InvalidArgument(
                f"the sha256 of the bytes received is {self.hash.hexdigest()}, "
                f"declared {self.sha256}"
            )


class LocalBlobStore:
    """Objects as files under ``root``, written to ``root/tmp`` and renamed into place."""

    def __init__(self, root: Path):
        self.root = root
        (root / TMP_PREFIX).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, chunks: Iterable[bytes], *, size: int, sha256: str) -> None:
        digest = _Digest(key, size, sha256)
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / TMP_PREFIX, prefix="put-")
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                for data in chunks:
                    digest.update(data)
                    f.write(data)
                digest.check()
                # fsync before the rename: after a crash the name points at whole bytes or at
                # nothing, never at a file whose tail was still in the page cache.
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)

    def get(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb", buffering=0)  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise NotFound(f"no object {key}") from None
        return _read_file(f, chunk_bytes)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        base = self._path(prefix)
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                yield BlobInfo(path.relative_to(self.root).as_posix(), st.st_size, st.st_mtime)


def _read_file(f, chunk_bytes: int) -> Iterator[bytes]:
    with f:
        while data := f.read(chunk_bytes):
            yield data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _VerifyingReader:
    """File-like view of ``chunks`` for minio's ``put_object``. It checks the digest before
    handing over the last byte, so a mismatch raises inside put_object, which then aborts the
    multipart upload: the object never becomes visible."""

    def __init__(self, chunks: Iterable[bytes], digest: _Digest):
        self._chunks = iter(chunks)
        self._digest = digest
        # Pending pieces, joined once per read: minio asks for whole 5+ MiB parts, and one
        # join copies each byte once where a growing bytearray would copy it three times.
        self._pieces: list[bytes | memoryview] = []
        self._buffered = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if not self._done and self._digest.seen == self._digest.size:
            self._finish()  # an empty file, or all bytes read by an earlier call
        while not self._done and (n < 0 or self._buffered < n):
            data = next(self._chunks, None)
            if data is None:
                self._done = True
                self._digest.check()
                break
            self._digest.update(data)
            self._pieces.append(data)
            self._buffered += len(data)
            if self._digest.seen == self._digest.size:
                self._finish()
        if n < 0 or n >= self._buffered:
            out, self._pieces, self._buffered = b"".join(self._pieces), [], 0
            return out
        take, left = [], n
        while left:
            piece = self._pieces[0]
            if len(piece) <= left:
                take.append(self._pieces.pop(0))
                left -= len(piece)
            else:
                view = memoryview(piece)
                take.append(view[:left])
                self._pieces[0] = view[left:]
                left = 0
        self._buffered -= n
        return b"".join(take)

    def _finish(self) -> None:
        """No more bytes may come: run the producer to its end (its own checks run there)
        and check the digest now, before minio sends the final part."""
        extra = next(self._chunks, None)
        if extra:
            self._digest.update(extra)  # raises: more than declared
        self._done = True
        self._digest.check()


class S3BlobStore:
    """Objects in an S3-compatible bucket (MinIO, AWS S3, moto) through the ``minio`` SDK."""

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        prefix: str = "",
    ):
        from minio import Minio

        if "://" in endpoint:  # accept a URL too: its scheme decides TLS
            scheme, _, endpoint = endpoint.partition("://")
            secure = scheme == "https"
            endpoint = endpoint.rstrip("/")
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self.bucket = bucket
        self.prefix = prefix
        self._call(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def _call(self, fn, *args, **kwargs):
        """Run an SDK call, turning transport failures into ``Unavailable``."""
        from minio.error import MinioException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except (MinioException, HTTPError, OSError) as exc:
            if _is_no_such_key(exc):
                raise NotFound(f"no object {args[0] if args else ''}") from exc
            raise Unavailable(f"object storage error: {exc}") from exc

    def put(self, key: str, chunks: Iterable[bytes], *, size: int, sha256: str) -> None:
        reader = _VerifyingReader(chunks, _Digest(key, size, sha256))
        # Length known: minio uploads fixed-size parts (5 MiB+) and holds one in memory at a time.
        self._call(self.client.put_object, self.bucket, self.prefix + key, reader, size)

    def get(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        response = self._call(self.client.get_object, self.bucket, self.prefix + key)
        return self._stream(response, chunk_bytes)

    def _stream(self, response, chunk_bytes: int) -> Iterator[bytes]:
        from urllib3.exceptions import HTTPError

        try:
            yield from response.stream(chunk_bytes)
        except (HTTPError, OSError) as exc:
            raise Unavailable(f"object storage error while reading: {exc}") from exc
        finally:
            response.close()
            response.release_conn()

    def presigned_get(self, key: str, expires: timedelta) -> str:
        """A URL that lets whoever holds it GET ``key`` (Range requests too) until ``expires``
        from now. Signed locally with the store's credentials: no request to object storage
        once the bucket's region is known (set ``region`` to skip even that lookup)."""
        return self._call(
            self.client.presigned_get_object, self.bucket, self.prefix + key, expires=expires
        )

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.stat_object, self.bucket, self.prefix + key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(self.client.remove_object, self.bucket, self.prefix + key)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        objects = self._call(
            lambda: list(
                self.client.list_objects(self.bucket, prefix=self.prefix + prefix, recursive=True)
            )
        )
        for obj in objects:
            modified = obj.last_modified.timestamp() if obj.last_modified else time.time()
            yield BlobInfo(obj.object_name[len(self.prefix) :], obj.size or 0, modified)


def _is_no_such_key(exc: Exception) -> bool:
    return getattr(exc, "code", None) in ("NoSuchKey", "NoSuchObject", "ResourceNotFound")
