"""Direct pulls: a version's files fetched straight from object storage with the presigned URLs
the registry answers (``GetDownloadUrls``), large files in parallel HTTP Range parts.

The parts are fed, in manifest order, to the same ``PullWriter`` as a streamed pull, so the same
checks decide what becomes visible: each file's size and sha256 against the manifest the
registry answered, a staging folder renamed into place only once every file is whole. Object
storage is not trusted with integrity, only with moving bytes.

A URL that has expired (or that object storage refuses with HTTP 403, e.g. because the clocks
disagree) is renewed by asking the registry again for that file of the same pinned version.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# urllib3 rather than httpx: on loopback httpx's pure-Python HTTP/1.1 parser read a 100 MB body
# at ~0.55x of urllib3 (the minio SDK's own transport), which would cap a direct pull below a
# raw SDK get.
import urllib3

from services.client.transfer import PullWriter
from services.common.errors import Cancelled, DataLoss, Unavailable, shown
from services.common.stubs import registry_pb2

# Large files go in parallel Range requests: one connection rarely fills a long link to object
# storage, several do (the pattern of `aws s3 cp` and huggingface_hub's downloads). Smaller ones
# (adapters, configs) go in one streamed request: a range costs a request each, and some servers
# pay for the whole object per range (moto reads all of it under a lock: 100 MB in 8 MiB ranges
# came at ~0.2x of one stream there), so ranges only pay off where a single stream takes seconds.
PARALLEL_MIN_BYTES = 256 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
WORKERS = 4
# Parts fetched ahead of the one being written; each holds at most PART_BYTES in memory.
WINDOW = 2 * WORKERS
READ_BYTES = 2 * 1024 * 1024
# Times one part asks for a fresh URL after object storage refused the one it had.
MAX_REFRESHES = 2
# A URL this close to its expiry is renewed before use: a request that starts just before the
# deadline would be refused by the time it reaches object storage.
EXPIRY_MARGIN = timedelta(seconds=1)
HTTP_TIMEOUT = urllib3.Timeout(connect=10.0, read=60.0)
TURN_OFF_HINT = (
    "if clients cannot reach object storage, turn direct transfers off on the registry "
    "(TUNEPLEX_REGISTRY_DIRECT_TRANSFERS=false)"
)

# Asks the registry for a fresh URL of one file (path) of the pinned version.
Refresh = Callable[[str], registry_pb2.GetDownloadUrlsResponse]


def pinned_ref(version: registry_pb2.ArtifactVersion) -> str:
    """The exact version an answer resolved to: a refresh or a fallback to streaming must read
    the same bytes even if an alias moved meanwhile."""
    return f"{version.name}@{version.version}"


@dataclass(frozen=True)
class _Part:
    path: str
    start: int
    length: int
    whole: bool  # the file in one request, without a Range header


def _parts(files: Sequence[registry_pb2.FileEntry], parallel_min_bytes: int) -> Iterator[_Part]:
    for entry in files:
        size = entry.size_bytes
        if size < parallel_min_bytes:
            if size > 0:  # an empty file needs no request: the writer completes it alone
                yield _Part(entry.path, 0, size, whole=True)
            continue
        for start in range(0, size, PART_BYTES):
            yield _Part(entry.path, start, min(PART_BYTES, size - start), whole=False)


def _expiring(url: registry_pb2.FileUrl) -> bool:
    if not url.HasField("expire_time"):
        return False
    return datetime.now(UTC) + EXPIRY_MARGIN >= url.expire_time.ToDatetime(tzinfo=UTC)


class _Urls:
    """The current URL of each file, shared by the worker threads; renewed once for all when
    it expires or is refused."""

    def __init__(self, answer: registry_pb2.GetDownloadUrlsResponse, refresh: Refresh):
        self._version = answer.version
        self._urls = {u.path: u for u in answer.urls}
        self._refresh = refresh
        self._lock = threading.Lock()
        for entry in answer.version.manifest.files:
            if entry.size_bytes > 0 and entry.path not in self._urls:
                raise DataLoss(f"the registry answered no download URL for {shown(entry.path)}")

    def current(self, path: str) -> registry_pb2.FileUrl:
        with self._lock:
            url = self._urls[path]
        return self.renew(path, url) if _expiring(url) else url

    def renew(self, path: str, stale: registry_pb2.FileUrl) -> registry_pb2.FileUrl:
        with self._lock:
            if self._urls[path].url != stale.url:
                return self._urls[path]  # another part renewed it meanwhile
            fresh = self._fresh(path)
            self._urls[path] = fresh
            return fresh

    def _fresh(self, path: str) -> registry_pb2.FileUrl:
        answer = self._refresh(path)
        if not answer.direct_transfers:
            raise Unavailable(
                "the registry turned direct transfers off during the pull; pull again"
            )
        if answer.version.manifest.sha256 != self._version.manifest.sha256:
            raise DataLoss(f"{pinned_ref(self._version)} changed its manifest during the pull")
        for url in answer.urls:
            if url.path == path:
                return url
        raise DataLoss(f"the registry answered no download URL for {shown(path)}")


def _corrupted(entry_path: str, sha256: str) -> DataLoss:
    return DataLoss(
        f"{entry_path}: the bytes in object storage do not match their sha256 {sha256}; "
        "refusing them",
        code="blob_corrupted",
    )


class _Stopped(Exception):
    """The pull failed elsewhere: a worker stops reading."""


class _PartStream:
    """One part's bytes, handed from the worker that reads them to the thread that writes them
    as they arrive, so hashing and writing overlap the transfer. Bounded: a worker ahead of
    the writer (a later file, read whole) waits once it holds PART_BYTES."""

    def __init__(self, part: _Part, stop: threading.Event):
        self.part = part
        self._stop = stop
        self._chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(
            maxsize=max(1, PART_BYTES // READ_BYTES)
        )

    def put(self, item: bytes | BaseException | None) -> None:
        """Called by the worker; gives up once the pull has stopped (nobody reads any more)."""
        while True:
            try:
                self._chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    raise _Stopped from None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                item = self._chunks.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():  # the caller gave up (a cancelled async pull)
                    raise _Stopped from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _fetch(
    http: urllib3.PoolManager,
    urls: _Urls,
    stream: _PartStream,
    entry: registry_pb2.FileEntry,
    stop: threading.Event,
) -> None:
    """Read one part into ``stream``, renewing the URL when object storage refuses it. Runs in
    a worker; every outcome, bytes or error, reaches the writer through the stream."""
    try:
        _read_part(http, urls, stream, entry, stop)
        stream.put(None)
    except _Stopped:
        pass
    except BaseException as exc:  # noqa: BLE001 - handed to the writer's thread, raised there
        with contextlib.suppress(_Stopped):
            stream.put(exc)


def _read_part(
    http: urllib3.PoolManager,
    urls: _Urls,
    stream: _PartStream,
    entry: registry_pb2.FileEntry,
    stop: threading.Event,
) -> None:
    part = stream.part
    url = urls.current(part.path)
    headers = {} if part.whole else {"Range": f"bytes={part.start}-{part.start + part.length - 1}"}
    try:
        for attempt in range(MAX_REFRESHES + 1):
            response = http.request("GET", url.url, headers=headers, preload_content=False)
            if response.status != 403 or attempt == MAX_REFRESHES:
                break
            response.drain_conn()
            url = urls.renew(part.path, url)
        try:
            _check_status(response.status, part, entry)
            seen = 0
            for data in response.stream(READ_BYTES, decode_content=False):
                if stop.is_set():
                    raise _Stopped
                seen += len(data)
                if seen > part.length:
                    raise _corrupted(part.path, entry.sha256)
                stream.put(data)
            if seen != part.length:
                raise _corrupted(part.path, entry.sha256)
        finally:
            response.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        # Never the URL in a message: it is a credential until it expires.
        raise Unavailable(
            f"cannot download {shown(part.path)} from object storage "
            f"({type(exc).__name__}); {TURN_OFF_HINT}"
        ) from None


def _check_status(status: int, part: _Part, entry: registry_pb2.FileEntry) -> None:
    if status == (200 if part.whole else 206):
        return
    if status == 404:
        raise DataLoss(f"{part.path}: its blob {entry.sha256} is missing from object storage")
    if status == 416:  # the stored object is shorter than the manifest says
        raise _corrupted(part.path, entry.sha256)
    raise Unavailable(
        f"object storage answered HTTP {status} for {shown(part.path)}"
        + (" even with a fresh URL" if status == 403 else "")
    )


def download(
    writer: PullWriter,
    answer: registry_pb2.GetDownloadUrlsResponse,
    refresh: Refresh,
    *,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
    stop: threading.Event | None = None,
) -> None:
    """Fetch every file of ``answer.version`` into ``writer`` (started here; the caller
    finishes or closes it); files of ``parallel_min_bytes`` and more in parallel Range parts.
    Blocking: parts download in worker threads while this thread writes and hashes them in
    manifest order."""
    files = {f.path: f for f in answer.version.manifest.files}
    urls = _Urls(answer, refresh)
    writer.start(answer.version)
    parts = _parts(answer.version.manifest.files, max(parallel_min_bytes, 1))
    # Set by a caller that gave up (`stop`), or here once the pull ends either way.
    stop = stop if stop is not None else threading.Event()
    http = urllib3.PoolManager(maxsize=WORKERS, timeout=HTTP_TIMEOUT, retries=False)
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="pull")
    pending: deque[tuple[_PartStream, Future[None]]] = deque()

    def submit() -> None:
        part = next(parts, None)
        if part is not None:
            stream = _PartStream(part, stop)
            future = pool.submit(_fetch, http, urls, stream, files[part.path], stop)
            pending.append((stream, future))

    try:
        for _ in range(WINDOW):
            submit()
        while pending:
            stream, _future = pending.popleft()
            try:
                for data in stream:
                    writer.data(stream.part.path, data)
            except _Stopped:
                raise Cancelled("the pull was cancelled") from None
            submit()
    finally:
        stop.set()  # workers still reading stop at their next chunk
        pool.shutdown(wait=True, cancel_futures=True)
        http.clear()


def pull(
    dest: Path,
    answer: registry_pb2.GetDownloadUrlsResponse,
    refresh: Refresh,
    *,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
    stop: threading.Event | None = None,
) -> registry_pb2.ArtifactVersion:
    """Download ``answer.version`` into ``dest``, which gets the files only once all are
    complete and verified; on any error, or once ``stop`` is set, ``dest`` is left as it was
    and the staging folder removed. Blocking."""
    writer = PullWriter(dest)
    try:
        download(writer, answer, refresh, parallel_min_bytes=parallel_min_bytes, stop=stop)
        return writer.finish()
    finally:
        writer.close()
