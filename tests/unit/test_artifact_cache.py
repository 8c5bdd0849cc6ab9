"""The shared verified artifact cache (trainer and gateway): keyed by manifest sha256, every
file checked before each use, only verified downloads renamed into place, one writer per key
across processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import pytest

from services.client.artifact_cache import ArtifactCache
from services.common.errors import DataLoss, NotFound
from services.common.stubs import registry_pb2
from services.trainer.artifacts import RegistryPullCache


def _version(files: dict[str, bytes], name: str = "m", number: int = 1):
    entries = [
        registry_pb2.FileEntry(path=p, size_bytes=len(b), sha256=hashlib.sha256(b).hexdigest())
        for p, b in files.items()
    ]
    digest = hashlib.sha256(json.dumps([e.sha256 for e in entries]).encode()).hexdigest()
    return registry_pb2.ArtifactVersion(
        name=name, version=number, manifest=registry_pb2.Manifest(sha256=digest, files=entries)
    )


class Downloads:
    """Writes the files it is given into the staging folder, like a pull, and counts."""

    def __init__(self, files: dict[str, bytes], served: dict[str, bytes] | None = None):
        self.version = _version(files)
        self.served = served or files  # what actually arrives (a corrupt registry differs)
        self.count = 0

    def __call__(self, staged: Path) -> registry_pb2.ArtifactVersion:
        self.count += 1
        for path, data in self.served.items():
            (staged / path).parent.mkdir(parents=True, exist_ok=True)
            (staged / path).write_bytes(data)
        return self.version

    @property
    def key(self) -> str:
        return self.version.manifest.sha256


FILES = {"config.json": b'{"hidden_size": 8}', "sub/model.safetensors": b"w" * 1000}


def test_a_fetched_entry_is_reused_while_it_matches(tmp_path):
    cache, download = ArtifactCache(tmp_path), Downloads(FILES)
    first = cache.get_or_fetch(download.key, "m@1", download)
    again = cache.get_or_fetch(download.key, "m@1", download)
    assert download.count == 1 and again.path == first.path == tmp_path / download.key
    assert (first.path / "sub/model.safetensors").read_bytes() == FILES["sub/model.safetensors"]
    # At rest the folder holds the entry and its marker: no staging, no lock file.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        download.key,
        f"{download.key}.manifest.json",
    ]


def test_a_file_edited_right_after_verification_is_caught_and_fetched_again(tmp_path):
    """Same size, within the same timestamp tick: a size+mtime check would use it."""
    cache, download = ArtifactCache(tmp_path), Downloads(FILES)
    entry = cache.get_or_fetch(download.key, "m@1", download)
    (entry.path / "sub/model.safetensors").write_bytes(b"x" * 1000)
    healed = cache.get_or_fetch(download.key, "m@1", download)
    assert download.count == 2
    assert (healed.path / "sub/model.safetensors").read_bytes() == b"w" * 1000


def test_a_corrupt_download_is_refused_with_data_loss_and_never_becomes_an_entry(tmp_path):
    cache = ArtifactCache(tmp_path)
    download = Downloads(FILES, served={**FILES, "config.json": b'{"hidden_size": 9}'})
    with pytest.raises(DataLoss, match="config.json"):
        cache.get_or_fetch(download.key, "m@1", download)
    assert cache.entry(download.key) is None
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_entry_whose_fetch_fails_is_not_used(tmp_path):
    cache, download = ArtifactCache(tmp_path), Downloads(FILES)
    entry = cache.get_or_fetch(download.key, "m@1", download)
    (entry.path / "config.json").unlink()

    def registry_down(staged: Path):
        raise NotFound("gone")

    with pytest.raises(NotFound):
        cache.get_or_fetch(download.key, "m@1", registry_down)
    assert cache.entry(download.key) is None and not entry.path.exists()


def test_a_half_written_download_is_never_used(tmp_path):
    cache, download = ArtifactCache(tmp_path), Downloads(FILES)
    # What a killed process leaves: its staging, or a folder renamed before its marker.
    staged = cache.staging(download.key)
    staged.mkdir()
    (staged / "config.json").write_bytes(FILES["config.json"])
    cache.path(download.key).mkdir()
    (cache.path(download.key) / "config.json").write_bytes(b"half")
    assert cache.entry(download.key) is None

    entry = cache.get_or_fetch(download.key, "m@1", download)
    assert download.count == 1
    assert (entry.path / "config.json").read_bytes() == FILES["config.json"]
    assert not staged.exists()


def test_a_download_that_fails_half_way_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)
    version = _version(FILES)

    def killed(staged: Path):
        staged.mkdir()
        (staged / "config.json").write_bytes(FILES["config.json"])
        raise DataLoss("stream ended")

    with pytest.raises(DataLoss):
        cache.get_or_fetch(version.manifest.sha256, "m@1", killed)
    assert list(tmp_path.iterdir()) == []


def test_two_versions_are_two_keys_even_under_one_ref(tmp_path):
    """A version deleted and pushed again as m@1 with other bytes names another key."""
    cache = ArtifactCache(tmp_path)
    old, new = Downloads({"w.bin": b"old"}), Downloads({"w.bin": b"new"})
    assert old.key != new.key
    a = cache.get_or_fetch(old.key, "m@1", old)
    b = cache.get_or_fetch(new.key, "m@1", new)
    assert (a.path / "w.bin").read_bytes() == b"old" and (b.path / "w.bin").read_bytes() == b"new"


def test_a_version_that_changed_while_fetched_is_refused(tmp_path):
    cache, download = ArtifactCache(tmp_path), Downloads(FILES)
    other = Downloads({"w.bin": b"other"})
    with pytest.raises(DataLoss, match="changed while it was being fetched"):
        cache.get_or_fetch(other.key, "m@1", download)
    assert cache.entry(other.key) is None


def test_a_key_that_is_not_a_sha256_is_refused(tmp_path):
    with pytest.raises(DataLoss, match="not a sha256"):
        ArtifactCache(tmp_path).get_or_fetch("../escape", "m@1", Downloads(FILES))
    assert list(tmp_path.iterdir()) == []


def _fetch_in_process(root: str, key: str, log: str) -> None:
    def slow_download(staged: Path):
        with open(log, "a") as f:
            f.write("download\n")
        time.sleep(0.5)  # long enough for the other process to arrive meanwhile
        return Downloads(FILES)(staged)

    ArtifactCache(Path(root)).get_or_fetch(key, "m@1", slow_download)


def test_processes_sharing_the_folder_download_a_key_once(tmp_path):
    key, log = Downloads(FILES).key, tmp_path / "downloads.log"
    root = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_fetch_in_process, args=(str(root), key, str(log))) for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert [w.exitcode for w in workers] == [0, 0]
    assert log.read_text() == "download\n"
    entry = ArtifactCache(root).entry(key)
    assert entry is not None
    ArtifactCache(root).verify(entry)


def test_sweep_removes_dead_downloads_but_not_a_live_one(tmp_path):
    cache = ArtifactCache(tmp_path)
    dead, live = Downloads({"w.bin": b"dead"}).key, Downloads({"w.bin": b"live"}).key
    dead_staging, live_staging = cache.staging(dead), cache.staging(live)
    dead_staging.mkdir()
    live_staging.mkdir()
    with cache.lock(live):
        cache.sweep_staging()
    assert not dead_staging.exists() and live_staging.exists()


class RegistryWithOneModel:
    """The registry client calls the trainer's cache makes: resolve, pull, read_file."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.pulls = 0

    def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        return _version(self.files)

    def pull(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        self.pulls += 1
        return Downloads(self.files)(dest)


def test_the_trainer_cache_pulls_again_when_a_cached_file_was_edited(tmp_path):
    registry = RegistryWithOneModel(FILES)
    cache = RegistryPullCache(registry, tmp_path)
    _, folder = cache.fetch("model", "m", "training.base_model")
    (folder / "config.json").write_bytes(b'{"hidden_size": 1}')  # same size, other bytes
    _, again = cache.fetch("model", "m", "training.base_model")
    assert registry.pulls == 2 and (again / "config.json").read_bytes() == FILES["config.json"]
