"""Moving files in and out of the registry: the local side of uploads and downloads.

Uploads send each file's size and sha256 in the header (computed here first), so the registry
can refuse a corrupted upload and store blobs under their content address. Downloads are
verified again here, and land in ``dest`` only once every file is complete and verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, shown
from services.common.file_layout import check_file_layout
from services.common.kinds import KINDS
from services.common.stubs import registry_pb2

CHUNK_BYTES = 2 * 1024 * 1024
HASH_BLOCK = 4 * 1024 * 1024


def kind_value(kind: str) -> registry_pb2.ArtifactKind:
    try:
        return KINDS[kind]
    except KeyError:
        raise InvalidArgument(
            f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}", param="kind"
        ) from None


def kind_label(kind: registry_pb2.ArtifactKind) -> str:
    return {v: k for k, v in KINDS.items()}.get(kind, "unknown")


def local_files(path: Path) -> list[tuple[str, Path]]:
    """(path in the version, file on disk) for a file or every file under a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [(path.name, path)]
    if not path.is_dir():
        raise InvalidArgument(f"no such file or folder: {path}", param="path")
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    if not files:
        raise InvalidArgument(f"{path} holds no files", param="path")
    return files


def file_entry(rel: str, path: Path) -> registry_pb2.FileEntry:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return registry_pb2.FileEntry(path=rel, size_bytes=size, sha256=digest.hexdigest())


def upload_header(
    kind: str,
    name: str,
    entries: list[registry_pb2.FileEntry],
    *,
    base_model: str | None,
    description: str,
    lineage: registry_pb2.Lineage | None,
    source: str,
) -> registry_pb2.UploadArtifactRequest:
    header = registry_pb2.UploadHeader(
        kind=kind_value(kind),
        name=name,
        description=description,
        base_model=base_model or "",
        files=entries,
        source=source,
    )
    if lineage is not None:
        header.lineage.CopyFrom(lineage)
    return registry_pb2.UploadArtifactRequest(header=header)


def file_requests(
    files: list[tuple[str, Path]], chunk_bytes: int = CHUNK_BYTES
) -> Iterator[registry_pb2.UploadArtifactRequest]:
    for rel, path in files:
        with open(path, "rb", buffering=0) as f:
            while data := f.read(chunk_bytes):
                # Filled in place: a nested constructor would copy the bytes twice.
                request = registry_pb2.UploadArtifactRequest()
                request.chunk.path = rel
                request.chunk.data = data
                yield request


class PullWriter:
    """Receives a download into a staging folder beside ``dest`` and moves it into place only
    once every file has arrived and matched its sha256, so a failed pull leaves ``dest`` as it
    was: absent, or the folder it was. Blocking file I/O."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        self.version: registry_pb2.ArtifactVersion | None = None
        self._files: list[registry_pb2.FileEntry] = []
        self._index = -1
        self._file: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self._written = 0
        self._staging: Path | None = None
        self._made: list[Path] = []  # folders above ``dest`` this pull created

    def start(self, version: registry_pb2.ArtifactVersion) -> None:
        self.version = version
        self._files = list(version.manifest.files)
        try:
            # A version stored before the registry checked layouts may not fit a file system;
            # refuse it before a byte is written rather than fail half-way.
            check_file_layout(f.path for f in self._files)
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"{version.name}@{version.version} cannot be written to disk: {exc.message}",
                code="file_layout_invalid",
            ) from None
        if self.dest.exists() and not self.dest.is_dir():
            raise FailedPrecondition(
                f"cannot pull into {shown(self.dest.name)}: it exists and is not a folder",
                param="dest",
            )
        with _writing("the destination folder"):
            self._made = _make_folders(self.dest.parent)
            self._staging = Path(
                tempfile.mkdtemp(dir=self.dest.parent, prefix=f".{self.dest.name}.pull-")
            )
        self._next_file(self._staging)

    def _next_file(self, staging: Path) -> None:
        """Finish the current file, then open the next one (zero-byte files finish at once)."""
        while True:
            if self._file is not None:
                self._complete(self._file)
            self._index += 1
            if self._index >= len(self._files):
                return
            entry = self._files[self._index]
            target = staging / entry.path
            with _writing(f"file {shown(entry.path)}"):
                target.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(target, "wb")  # noqa: SIM115 - closed in _complete/close
            self._digest, self._written = hashlib.sha256(), 0
            if entry.size_bytes > 0:
                return

    def chunk(self, chunk: registry_pb2.FileChunk) -> None:
        # Each access of a bytes field copies it: once is enough.
        self.data(chunk.path, chunk.data)

    def data(self, path: str, data: bytes) -> None:
        """The next bytes of file ``path``, which must be the file being written: files arrive
        whole and in manifest order, from a gRPC stream or from object storage."""
        if self._index >= len(self._files):
            raise DataLoss("download sent more data than its manifest lists")
        if self._file is None or self._staging is None:
            raise DataLoss("download sent data before its manifest")
        entry = self._files[self._index]
        if path != entry.path or self._written + len(data) > entry.size_bytes:
            raise DataLoss(f"download stream does not match its manifest at {entry.path}")
        with _writing(f"file {shown(entry.path)}"):
            self._file.write(data)
        self._digest.update(data)
        self._written += len(data)
        if self._written == entry.size_bytes:
            self._next_file(self._staging)

    def _complete(self, file: BinaryIO) -> None:
        entry = self._files[self._index]
        # No fsync: this is a cache of what the registry keeps durably (like pip or
        # huggingface_hub downloads), and an fsync per pull would cost more than the transfer.
        with _writing(f"file {shown(entry.path)}"):
            file.close()
        self._file = None
        if self._digest.hexdigest() != entry.sha256:
            raise DataLoss(f"{entry.path}: received bytes do not match their sha256 {entry.sha256}")

    def finish(self) -> registry_pb2.ArtifactVersion:
        if self.version is None or self._staging is None or self._index < len(self._files):
            raise DataLoss("download ended before every file arrived")
        with _writing("the destination folder"):
            self._move_into_place(self._staging)
        self._staging, self._made = None, []
        return self.version

    def _move_into_place(self, staging: Path) -> None:
        try:
            os.rename(staging, self.dest)  # dest absent or empty: one atomic step
            return
        except OSError:
            if not self.dest.is_dir():
                raise
        # ``dest`` is a folder with files in it: the pulled files join them, replacing files of
        # the same path, once it is known that none of them meets a folder (or a file where a
        # folder must go), so the merge cannot fail half-way on the layout.
        for entry in self._files:
            target = self.dest / entry.path
            blocked = target.is_dir() or any(
                p.exists() and not p.is_dir() for p in _between(self.dest, target)
            )
            if blocked:
                raise FailedPrecondition(
                    f"cannot pull into {shown(self.dest.name)}: something already there is in "
                    f"the way of {shown(entry.path)}; pull into a new folder",
                    param="dest",
                )
        for entry in self._files:
            target = self.dest / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / entry.path, target)
        shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        """Undo what an unfinished pull wrote: the staging folder and the folders it made."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty: never what someone else put there
        self._made = []


class FileReader:
    """Receives a download of one file of a version (``DownloadArtifactRequest.paths``) into
    memory and returns its bytes only once their size and sha256 match the manifest's entry."""

    def __init__(self, path: str):
        self.path = path
        self._entry: registry_pb2.FileEntry | None = None
        self._parts: list[bytes] = []
        self._received = 0

    def start(self, version: registry_pb2.ArtifactVersion) -> None:
        found = [f for f in version.manifest.files if f.path == self.path]
        if not found:  # the registry answers NOT_FOUND first; a stream without it is broken
            raise DataLoss(f"download of {shown(self.path)} does not list it in its manifest")
        self._entry = found[0]

    def chunk(self, chunk: registry_pb2.FileChunk) -> None:
        entry = self._entry
        if entry is None:
            raise DataLoss("download sent data before its manifest")
        data = chunk.data
        if chunk.path != entry.path or self._received + len(data) > entry.size_bytes:
            raise DataLoss(f"download stream does not match its manifest at {entry.path}")
        self._parts.append(data)
        self._received += len(data)

    def finish(self) -> bytes:
        entry = self._entry
        if entry is None or self._received != entry.size_bytes:
            raise DataLoss(f"download of {shown(self.path)} ended before the file arrived")
        data = b"".join(self._parts)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise DataLoss(f"{entry.path}: received bytes do not match sha256 {entry.sha256}")
        return data


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``, returning the folders it created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _between(top: Path, target: Path) -> list[Path]:
    """The folders from just below ``top`` down to ``target``'s parent."""
    return [p for p in target.parents if p != top and p.is_relative_to(top)]


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
    # A local disk problem (full, read-only, a name too long for it) is one clear error for the
    # CLI to print and the gateway to map, never a traceback. No absolute path in the message:
    # the gateway's cache folder is its own business.
    try:
        yield
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot write {what} of the download: {exc.strerror or exc}",
            code="local_write_failed",
        ) from None
