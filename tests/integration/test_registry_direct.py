"""Direct pulls on the S3 backend (moto's server on loopback): the registry answers presigned
URLs (GetDownloadUrls) to an authenticated caller and the client fetches the blobs straight
from object storage, verifying them against the manifest before anything becomes visible."""

from __future__ import annotations

import io
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from services.client import direct_download
from services.client.direct_download import PART_BYTES
from services.client.registry import AsyncRegistryClient, RegistryClient
from services.common.errors import DataLoss, Unauthenticated
from tests.helpers.registry_artifacts import TINY_MODEL, write_adapter, write_model
from tests.helpers.registry_process import start_moto_s3, start_registry

pytestmark = pytest.mark.integration

API_KEY = "direct-key"
BUCKET = "registry-direct"
SMALL = 3_000_000
# Three Range parts for the weights when pulled with ranges from PART_BYTES up.
BIG = 2 * PART_BYTES + 1_000_000


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    s3 = start_moto_s3(tmp_path_factory.mktemp("moto") / "moto.log")
    yield s3
    s3.stop()


def _start(tmp_path_factory, moto_s3, name: str, **settings: str):
    env = {**moto_s3.registry_env(bucket=BUCKET)}
    env.update({f"TUNEPLEX_REGISTRY_{k.upper()}": v for k, v in settings.items()})
    server = start_registry(tmp_path_factory.mktemp(name), api_key=API_KEY, env=env)
    with RegistryClient(server.target, api_key=API_KEY) as client:
        client.push("model", TINY_MODEL, write_model(tmp_path_factory.mktemp("m") / "tiny"))
    return server


@pytest.fixture(scope="module")
def registry(tmp_path_factory, moto_s3):
    server = _start(tmp_path_factory, moto_s3, "reg-direct")
    yield server
    server.stop()


@pytest.fixture
def client(registry):
    with RegistryClient(registry.target, api_key=API_KEY, timeout=60) as c:
        yield c


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _handled(server, method: str) -> float:
    """``grpc_server_handled_total`` of one RegistryService method, all status codes, from the
    registry's /metrics."""
    port = server.env["TUNEPLEX_REGISTRY_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    label = f'method="/tuneplex.registry.v1.RegistryService/{method}"'
    counts = [
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("grpc_server_handled_total{") and label in line
    ]
    return sum(counts)


def _blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def _weights(version):
    return next(f for f in version.manifest.files if f.path.endswith(".safetensors"))


def _download(client: RegistryClient, ref: str, dest: Path, **options) -> list[str]:
    """A direct pull of adapter ``ref`` with ``direct_download`` options (such as ranges from
    a smaller size than the default); refreshes through the registry, as ``pull`` does.
    Returns the paths it asked fresh URLs for."""
    answer = client.download_urls("adapter", ref)
    assert answer is not None and answer.direct_transfers
    pinned = f"{answer.version.name}@{answer.version.version}"
    asked: list[str] = []

    def refresh(path: str):
        asked.append(path)
        fresh = client.download_urls("adapter", pinned, (path,))
        assert fresh is not None
        return fresh

    direct_download.pull(dest, answer, refresh, **options)
    return asked


def _no_trace_of_the_pull(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging


def test_pull_goes_straight_to_object_storage_byte_identical(registry, client, tmp_path):
    source = write_adapter(tmp_path / "a", size_bytes=SMALL, seed=1)
    version = client.push("adapter", "direct-lora", source)

    answer = client.download_urls("adapter", "direct-lora")
    assert answer is not None and answer.direct_transfers
    assert [u.path for u in answer.urls] == [f.path for f in version.manifest.files]
    # A URL is all it takes (no API key): it points into the bucket, not at the registry.
    weights_url = next(u for u in answer.urls if u.path.endswith(".safetensors"))
    assert weights_url.url.startswith(f"http://{registry_s3_endpoint(registry)}/{BUCKET}/")
    assert answer.urls[0].expire_time.seconds > time.time() + 200  # default: 300 s
    head = httpx.get(weights_url.url, headers={"Range": "bytes=0-7"})
    assert head.status_code == 206
    assert head.content == (source / "adapter_model.safetensors").read_bytes()[:8]

    streamed_before = _handled(registry, "DownloadArtifact")
    asked_before = _handled(registry, "GetDownloadUrls")
    pulled = client.pull("adapter", "direct-lora", tmp_path / "out")
    assert (pulled.name, pulled.version) == ("direct-lora", version.version)
    assert _files(tmp_path / "out") == _files(source)
    assert _handled(registry, "DownloadArtifact") == streamed_before  # no byte via gRPC
    assert _handled(registry, "GetDownloadUrls") == asked_before + 1


def registry_s3_endpoint(server) -> str:
    return server.env["TUNEPLEX_REGISTRY_S3_ENDPOINT"]


def test_a_large_file_comes_in_parallel_ranges_byte_identical(registry, client, tmp_path):
    source = write_adapter(tmp_path / "a", size_bytes=BIG, seed=9)
    client.push("adapter", "ranged-lora", source)
    assert _download(client, "ranged-lora", tmp_path / "out", parallel_min_bytes=PART_BYTES) == []
    assert _files(tmp_path / "out") == _files(source)


async def test_async_client_pulls_directly_too(registry, tmp_path):
    source = write_adapter(tmp_path / "a", size_bytes=SMALL, seed=2)
    async with AsyncRegistryClient(registry.target, api_key=API_KEY) as aclient:
        await aclient.push("adapter", "direct-async-lora", source)
        streamed_before = _handled(registry, "DownloadArtifact")
        await aclient.pull("adapter", "direct-async-lora", tmp_path / "out")
    assert _files(tmp_path / "out") == _files(source)
    assert _handled(registry, "DownloadArtifact") == streamed_before


def _damage(moto_s3, version, damage: str) -> None:
    """Change the weights' object in the bucket behind the registry's back."""
    key = _blob_key(_weights(version).sha256)
    s3 = moto_s3.minio()
    data = bytearray(s3.get_object(BUCKET, key).read())
    if damage == "truncate":
        data = data[:-1]
    elif damage == "append":
        data += b"\0"
    else:
        data[len(data) - 10] ^= 0x01  # in the last part when ranged
    s3.put_object(BUCKET, key, io.BytesIO(bytes(data)), len(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_damaged_object_is_data_loss_and_never_visible(registry, client, moto_s3, tmp_path, damage):
    name = f"direct-{damage}"
    version = client.push("adapter", name, write_adapter(tmp_path / "a", seed=3))
    _damage(moto_s3, version, damage)
    with pytest.raises(DataLoss, match="do not match their sha256") as raised:
        client.pull("adapter", name, tmp_path / "out")
    assert "X-Amz-Signature" not in raised.value.message  # a URL is a credential
    _no_trace_of_the_pull(tmp_path)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damage_in_a_ranged_part_is_data_loss_too(registry, client, moto_s3, tmp_path, damage):
    name = f"ranged-{damage}"
    version = client.push("adapter", name, write_adapter(tmp_path / "a", size_bytes=BIG, seed=3))
    _damage(moto_s3, version, damage)
    with pytest.raises(DataLoss, match="do not match their sha256"):
        _download(client, name, tmp_path / "out", parallel_min_bytes=PART_BYTES)
    _no_trace_of_the_pull(tmp_path)


def test_missing_object_is_data_loss(registry, client, moto_s3, tmp_path):
    version = client.push("adapter", "direct-gone", write_adapter(tmp_path / "a", seed=4))
    moto_s3.minio().remove_object(BUCKET, _blob_key(_weights(version).sha256))
    with pytest.raises(DataLoss, match="missing from object storage"):
        client.pull("adapter", "direct-gone", tmp_path / "out")
    _no_trace_of_the_pull(tmp_path)


def test_an_expired_url_is_refreshed_from_the_registry(tmp_path_factory, moto_s3, tmp_path):
    """URLs that live 1 s, used after 2 s: the client asks the registry for fresh ones (for the
    same pinned version) instead of using the stale ones. moto does not enforce expiry, so the
    refusal path (HTTP 403) is covered in tests/unit/test_client_direct_download.py."""
    server = _start(tmp_path_factory, moto_s3, "reg-expiry", direct_url_expiry_seconds="1")
    try:
        with RegistryClient(server.target, api_key=API_KEY) as client:
            source = write_adapter(tmp_path / "a", size_bytes=BIG, seed=5)
            version = client.push("adapter", "expiring-lora", source)
            client.push("adapter", "expiring-lora", write_adapter(tmp_path / "b", seed=6))
            answer = client.download_urls("adapter", f"expiring-lora@{version.version}")
            assert answer is not None
            stale = {u.url for u in answer.urls}
            time.sleep(2.0)

            asked: list[str] = []
            used: list[str] = []

            def refresh(path: str):
                asked.append(path)
                fresh = client.download_urls("adapter", f"expiring-lora@{version.version}", (path,))
                assert fresh is not None
                used.extend(u.url for u in fresh.urls)
                return fresh

            direct_download.pull(tmp_path / "out", answer, refresh, parallel_min_bytes=PART_BYTES)
            assert sorted(set(asked)) == ["adapter_config.json", "adapter_model.safetensors"]
            assert not stale & set(used)
            assert _files(tmp_path / "out") == _files(source)  # @1, not the newer @2

            # Through the SDK the same happens unseen: a whole pull with 1-second URLs.
            client.pull("adapter", f"expiring-lora@{version.version}", tmp_path / "again")
            assert _files(tmp_path / "again") == _files(source)
    finally:
        server.stop()


def test_a_caller_without_the_api_key_gets_no_url(registry, tmp_path):
    with RegistryClient(registry.target, api_key=API_KEY) as owner:
        owner.push("adapter", "direct-private", write_adapter(tmp_path / "a", seed=7))
    for key, message in ((None, "missing API key"), ("wrong-key", "invalid API key")):
        with RegistryClient(registry.target, api_key=key) as stranger:
            with pytest.raises(Unauthenticated, match=message):
                stranger.download_urls("adapter", "direct-private")
            with pytest.raises(Unauthenticated, match=message):
                stranger.pull("adapter", "direct-private", tmp_path / "out")
    _no_trace_of_the_pull(tmp_path)


def test_direct_transfers_off_streams_through_the_registry(tmp_path_factory, moto_s3, tmp_path):
    server = _start(tmp_path_factory, moto_s3, "reg-off", direct_transfers="false")
    try:
        with RegistryClient(server.target, api_key=API_KEY) as client:
            source = write_adapter(tmp_path / "a", size_bytes=SMALL, seed=8)
            client.push("adapter", "streamed-lora", source)
            answer = client.download_urls("adapter", "streamed-lora")
            assert answer is not None
            assert not answer.direct_transfers and not answer.urls
            assert answer.version.name == "streamed-lora"  # still resolved, to pin the stream
            client.pull("adapter", "streamed-lora", tmp_path / "out")
        assert _files(tmp_path / "out") == _files(source)
        assert _handled(server, "DownloadArtifact") == 1
    finally:
        server.stop()


def test_the_local_backend_offers_no_urls(tmp_path):
    server = start_registry(tmp_path / "home")
    try:
        with RegistryClient(server.target) as client:
            client.push("model", TINY_MODEL, write_model(tmp_path / "tiny"))
            answer = client.download_urls("model", TINY_MODEL)
            assert answer is not None and not answer.direct_transfers and not answer.urls
            client.pull("model", TINY_MODEL, tmp_path / "out")
        assert _files(tmp_path / "out") == _files(tmp_path / "tiny")
    finally:
        server.stop()
