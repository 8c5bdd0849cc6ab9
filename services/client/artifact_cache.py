"""The verified artifact cache: local copies of registry versions, keyed by manifest sha256 and
checked against that manifest before every use. The trainer (service and job workers, several
processes on one folder) and the gateway (a layer adding LRU, in-use entries and metrics) both
keep their copies here.

A version's manifest sha256 pins every byte of it, so a key never goes stale: a re-pushed
version or a moved alias simply names another key. An entry is the folder ``<root>/<key>`` plus
its marker ``<root>/<key>.manifest.json`` (the files' paths, sizes and sha256). A download lands
in a staging folder, every file is checked against the manifest, and only then is it renamed
into place and the marker written: a folder without a marker is never an entry, so a killed
download is never mistaken for a complete one. Whoever writes or replaces a key holds its file
lock (``flock``), so two processes never fetch the same key at once or replace an entry another
is checking.

Every use re-hashes every file (no size+mtime shortcut): a timestamp misses the edits that
matter here (bit rot and a bad disk leave mtime and ctime as they were; an edit within the
file system's timestamp tick, a few ms, leaves them equal too), and the caller reads every byte
right after anyway (a model load, an engine loading an adapter), so the hash costs one more read
of files it brings into the page cache for that load (~0.3 s for the 135M model's 270 MB here).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import DataLoss, shown
from services.common.stubs import registry_pb2

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".manifest.json"
STAGING_PREFIX = ".tmp-"
LOCK_SUFFIX = ".lock"
HASH_BLOCK = 4 * 1024 * 1024

_KEY = re.compile(r"[0-9a-f]{64}")

FileList = list[dict[str, Any]]  # each: path, size_bytes, sha256


@dataclass
class CachedVersion:
    """A complete, verified entry: ``path`` holds exactly ``files``."""

    key: str
    path: Path
    files: FileList
    size_bytes: int


def manifest_files(version: registry_pb2.ArtifactVersion) -> FileList:
    return [
        {"path": f.path, "size_bytes": f.size_bytes, "sha256": f.sha256}
        for f in version.manifest.files
    ]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def verify_files(root: Path, files: FileList) -> None:
    """Raise DataLoss unless every manifest file is present with its size and sha256."""
    for f in files:
        path = root / f["path"]
        if not path.is_file():
            raise DataLoss(f"cached file {f['path']} is missing")
        if path.stat().st_size != f["size_bytes"] or sha256_file(path) != f["sha256"]:
            raise DataLoss(f"cached file {f['path']} does not match its sha256")


class KeyLock:
    """An exclusive lock on one key across processes and threads: ``flock`` on
    ``<root>/.<key>.lock``, a file that exists only while someone holds or waits for it (so
    the cache folder holds entries and nothing else at rest). Removing it on release is safe
    because a waiter that wakes on a removed file sees its inode is no longer the path's and
    tries again."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """True once held; False at once when ``blocking`` is off and someone holds it."""
        flags = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                self._fd = fd
                return True
            os.close(fd)  # the holder before us removed it: lock the new one

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> KeyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


class ArtifactCache:
    """Verified entries under one folder. Blocking file I/O; callers hold ``lock(key)`` around
    anything that writes a key (``get_or_fetch`` does)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / _checked(key)

    def marker(self, key: str) -> Path:
        return self.root / f"{_checked(key)}{MARKER_SUFFIX}"

    def lock(self, key: str) -> KeyLock:
        return KeyLock(self.root / f".{_checked(key)}{LOCK_SUFFIX}")

    def entry(self, key: str) -> CachedVersion | None:
        """The entry of ``key`` as its marker describes it (not yet verified), if complete."""
        try:
            files = json.loads(self.marker(key).read_text())["files"]
            size = sum(int(f["size_bytes"]) for f in files)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not self.path(key).is_dir():
            return None
        return CachedVersion(key, self.path(key), files, size)

    def entries(self) -> list[CachedVersion]:
        """Complete entries, oldest marker first; markers without a folder and broken ones are
        removed."""
        markers = sorted(self.root.glob(f"*{MARKER_SUFFIX}"), key=lambda p: p.stat().st_mtime)
        found = []
        for marker in markers:
            key = marker.name[: -len(MARKER_SUFFIX)]
            entry = self.entry(key)
            if entry is None:
                self.remove(key)
            else:
                found.append(entry)
        return found

    def verify(self, entry: CachedVersion) -> None:
        """Every file against the manifest; DataLoss if any differs (the entry is left for the
        caller to remove or replace)."""
        verify_files(entry.path, entry.files)

    def staging(self, key: str) -> Path:
        """A new staging folder name for a download of ``key`` (not created: a pull makes it)."""
        return self.root / f"{STAGING_PREFIX}{key}-{uuid.uuid4().hex[:8]}"

    def commit(
        self, key: str, staged: Path, version: registry_pb2.ArtifactVersion, ref: str
    ) -> CachedVersion:
        """Verify ``staged`` against ``version``'s manifest and rename it into place as the
        entry of ``key``, replacing whatever was there. DataLoss if ``version`` is not ``key``
        (the ref moved while it was fetched) or a file differs: nothing is replaced then."""
        if version.manifest.sha256 != key:
            raise DataLoss(f"{ref} changed while it was being fetched; retry")
        files = manifest_files(version)
        verify_files(staged, files)
        self.remove(key)
        staged.rename(self.path(key))
        self._write_marker(key, {"ref": ref, "files": files})
        return CachedVersion(key, self.path(key), files, sum(f["size_bytes"] for f in files))

    def _write_marker(self, key: str, content: dict[str, Any]) -> None:
        # Written aside and renamed, so a marker is either whole or absent.
        partial = self.root / f"{STAGING_PREFIX}{key}-{uuid.uuid4().hex[:8]}.marker"
        partial.write_text(json.dumps(content))
        partial.rename(self.marker(key))

    def remove(self, key: str) -> None:
        """Marker first: from then on the folder is no longer an entry for anyone."""
        self.marker(key).unlink(missing_ok=True)
        shutil.rmtree(self.path(key), ignore_errors=True)

    def sweep_staging(self) -> None:
        """Remove staging folders (and stale lock files) that dead processes left: those of
        keys whose lock is free, since a live download holds its key's lock."""
        for key in {k for p in self.root.glob(".*") if (k := _key_of_leftover(p.name))}:
            lock = self.lock(key)
            if lock.acquire(blocking=False):
                try:
                    self._remove_staging_of(key)
                finally:
                    lock.release()

    def verified_entry(self, key: str, ref: str) -> CachedVersion | None:
        """The entry of ``key`` if it is complete and every file matches; a corrupt one is
        removed. Under the key's lock, since it may remove."""
        entry = self.entry(key)
        if entry is None:
            return None
        try:
            self.verify(entry)
        except DataLoss as exc:
            log.warning("cache entry %s (%s) is corrupt; removing it: %s", key, ref, exc.message)
            self.remove(key)
            return None
        return entry

    def get_or_fetch(
        self, key: str, ref: str, download: Callable[[Path], registry_pb2.ArtifactVersion]
    ) -> CachedVersion:
        """The verified entry of ``key``: the cached one if every file still matches, else
        ``download(staging)`` (which fills the folder it is given and returns the version)
        committed in its place. One process at a time per key."""
        with self.lock(key):
            entry = self.verified_entry(key, ref)
            if entry is not None:
                return entry
            self._remove_staging_of(key)
            staged = self.staging(key)
            try:
                return self.commit(key, staged, download(staged), ref)
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def _remove_staging_of(self, key: str) -> None:
        """Staging of ``key`` left by a process that died mid-download (the caller holds the
        key's lock, so no live download is writing it)."""
        for leftover in self.root.glob(".*"):
            if _staged_key(leftover.name) != key or leftover.name.endswith(LOCK_SUFFIX):
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _checked(key: str) -> str:
    # The key becomes a file name: only a sha256 may, never a path a registry made up.
    if not _KEY.fullmatch(key):
        raise DataLoss(f"manifest sha256 {shown(key)} is not a sha256; refusing to cache it")
    return key


def _key_of_leftover(name: str) -> str | None:
    if name.startswith(".") and name.endswith(LOCK_SUFFIX):
        key = name[1 : -len(LOCK_SUFFIX)]
    else:
        key = _staged_key(name) or ""
    return key if _KEY.fullmatch(key) else None


def _staged_key(name: str) -> str | None:
    """The key a staging name belongs to: ``.tmp-<key>-<x>`` (a download, a marker being
    written) or the pull's own staging beside it, ``..tmp-<key>-<x>.pull-<y>``."""
    rest = name.lstrip(".")
    if not rest.startswith(STAGING_PREFIX[1:]):
        return None
    key, sep, _ = rest[len(STAGING_PREFIX) - 1 :].partition("-")
    return key if sep and key else None
