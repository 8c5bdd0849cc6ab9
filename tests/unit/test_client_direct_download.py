"""What a direct pull does when object storage refuses a URL or cannot be reached. moto (the
S3 server of the integration tests) enforces neither signatures nor expiry, so a small HTTP
server on loopback stands in for object storage here: it serves one blob, with Range requests,
to the URLs whose token it currently accepts and answers 403 (as S3 does for an expired URL)
to the others."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.client import direct_download
from services.client.direct_download import MAX_REFRESHES, PART_BYTES
from services.common.errors import DataLoss, Unavailable
from services.common.stubs import registry_pb2

BLOB = bytes(range(256)) * ((2 * PART_BYTES + 12345) // 256)
CONFIG = b'{"r": 4}'


class ObjectStorage(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.accepted: set[str] = set()
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def url(self, name: str, token: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}?X-Amz-Signature={token}"


class _Handler(BaseHTTPRequestHandler):
    server: ObjectStorage

    def do_GET(self) -> None:
        name, _, query = self.path.lstrip("/").partition("?")
        token = query.partition("=")[2]
        with self.server.lock:
            self.server.requests.append(token)
        body = {"blob": BLOB, "config": CONFIG}[name]
        if token not in self.server.accepted:
            self._send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired")
            return
        ranged = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if ranged:
            start, end = int(ranged[1]), int(ranged[2])
            self._send(206, body[start : end + 1])
        else:
            self._send(200, body)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def storage():
    server = ObjectStorage()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _answer(storage_url, token: str, paths=("adapter_config.json", "w.safetensors")):
    version = registry_pb2.ArtifactVersion(name="lora", version=3)
    version.manifest.sha256 = "m" * 64
    for path, body in (("adapter_config.json", CONFIG), ("w.safetensors", BLOB)):
        version.manifest.files.add(
            path=path, size_bytes=len(body), sha256=hashlib.sha256(body).hexdigest()
        )
    answer = registry_pb2.GetDownloadUrlsResponse(version=version, direct_transfers=True)
    for path in paths:
        url = answer.urls.add(
            path=path, url=storage_url("config" if "json" in path else "blob", token)
        )
        url.expire_time.GetCurrentTime()
        url.expire_time.seconds += 300
    return answer


class Registry:
    """Answers refreshes as the registry would: the same version, a new token each time."""

    def __init__(self, storage: ObjectStorage, accept_fresh: bool = True):
        self.storage, self.accept_fresh = storage, accept_fresh
        self.asked: list[str] = []

    def refresh(self, path: str) -> registry_pb2.GetDownloadUrlsResponse:
        token = f"fresh{len(self.asked)}"
        self.asked.append(path)
        if self.accept_fresh:
            self.storage.accepted.add(token)
        return _answer(self.storage.url, token, paths=(path,))


def _pull(dest: Path, answer, refresh, **options) -> None:
    direct_download.pull(dest, answer, refresh, **options)


def _never(path: str):
    raise AssertionError(f"no refresh expected, asked for {path}")


def test_a_refused_url_is_renewed_once_for_all_parallel_parts(storage, tmp_path):
    storage.accepted.add("first")
    answer = _answer(storage.url, "first")
    answer.urls[1].url = storage.url("blob", "expired")  # the weights' URL is refused
    registry = Registry(storage)
    _pull(tmp_path / "out", answer, registry.refresh, parallel_min_bytes=PART_BYTES)
    assert (tmp_path / "out" / "w.safetensors").read_bytes() == BLOB
    assert (tmp_path / "out" / "adapter_config.json").read_bytes() == CONFIG
    # three parts were refused at once, but one fresh URL served them all
    assert registry.asked == ["w.safetensors"]
    assert storage.requests.count("fresh0") == 3


def test_a_url_still_refused_after_fresh_ones_is_unavailable(storage, tmp_path):
    registry = Registry(storage, accept_fresh=False)
    with pytest.raises(Unavailable, match="HTTP 403 .* even with a fresh URL") as raised:
        _pull(tmp_path / "out", _answer(storage.url, "expired"), registry.refresh)
    # each file in flight asks again at most MAX_REFRESHES times, then gives up
    assert registry.asked.count("adapter_config.json") == MAX_REFRESHES
    assert registry.asked.count("w.safetensors") <= MAX_REFRESHES
    assert "X-Amz-Signature" not in raised.value.message  # a URL is a credential
    assert not re.search(r"fresh\d", raised.value.message)
    assert list(tmp_path.iterdir()) == []  # nothing visible, no staging left


def test_unreachable_object_storage_says_how_to_turn_direct_transfers_off(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answer = _answer(lambda name, token: f"http://127.0.0.1:{port}/{name}?t={token}", "t")
    with pytest.raises(Unavailable, match="TUNEPLEX_REGISTRY_DIRECT_TRANSFERS=false") as raised:
        _pull(tmp_path / "out", answer, refresh=_never)
    assert f"127.0.0.1:{port}" not in raised.value.message
    assert list(tmp_path.iterdir()) == []


def test_direct_transfers_turned_off_meanwhile_is_unavailable(storage, tmp_path):
    class Off(Registry):
        def refresh(self, path):
            answer = super().refresh(path)
            answer.direct_transfers = False
            del answer.urls[:]
            return answer

    with pytest.raises(Unavailable, match="turned direct transfers off"):
        _pull(tmp_path / "out", _answer(storage.url, "expired"), Off(storage).refresh)
    assert list(tmp_path.iterdir()) == []


def test_an_answer_without_a_url_for_a_file_is_data_loss(storage, tmp_path):
    answer = _answer(storage.url, "first", paths=("adapter_config.json",))
    with pytest.raises(DataLoss, match="no download URL for 'w.safetensors'"):
        _pull(tmp_path / "out", answer, refresh=_never)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_file_stops_the_workers_reading_ahead(storage, tmp_path):
    # The weights (read whole, ahead of the writer, more than a part's worth) wait in a
    # bounded buffer; the config fails its sha256 first, and the pull must end at once rather
    # than wait for a reader nobody drains.
    storage.accepted.add("first")
    answer = _answer(storage.url, "first")
    answer.version.manifest.files[0].sha256 = "0" * 64
    started = time.monotonic()
    with pytest.raises(DataLoss, match="adapter_config.json: received bytes do not match"):
        _pull(tmp_path / "out", answer, refresh=_never, parallel_min_bytes=len(BLOB) + 1)
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


def test_a_pull_told_to_stop_ends_and_leaves_nothing(storage, tmp_path):
    """What a cancelled async pull does: its thread is told to stop, and stops at the next
    chunk, with no staging folder left behind (it would sit outside the cache's budget)."""
    from services.common.errors import Cancelled

    storage.accepted.add("first")
    stop = threading.Event()
    stop.set()  # asked to stop before the first byte is written
    with pytest.raises(Cancelled):
        _pull(
            tmp_path / "out",
            _answer(storage.url, "first"),
            refresh=_never,
            parallel_min_bytes=PART_BYTES,
            stop=stop,
        )
    assert list(tmp_path.iterdir()) == []


def test_a_client_that_cannot_reach_object_storage_streams_through_the_registry(tmp_path):
    """The registry offers URLs of a storage endpoint this client cannot reach: the pull is
    streamed instead (the registry reads the same blobs), with a warning naming the setting."""
    from services.client.registry import RegistryClient

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nobody listens there once this socket is closed
    answer = _answer(lambda name, token: f"http://127.0.0.1:{port}/{name}?t={token}", "x")

    class Unreachable(RegistryClient):
        """The product's `pull` over a registry that offers those URLs (no channel here)."""

        def __init__(self) -> None:
            self.streamed: list[str] = []

        def download_urls(self, kind, ref, paths=()):
            return answer

        def _pull_streamed(self, kind, ref, dest):
            self.streamed.append(ref)
            return answer.version

        def _unary(self, *args, **kwargs):
            raise AssertionError("no URL refresh: nothing was refused, storage was unreachable")

    client = Unreachable()
    client.pull("adapter", "lora", tmp_path / "out")
    assert client.streamed == ["lora@3"]  # the exact version the answer resolved, no alias
    assert list(tmp_path.iterdir()) == []
