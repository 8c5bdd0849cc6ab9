"""Moving files in and out of the registry: the local side of uploads and downloads.

Uploads send each file's size and sha256 in the header (computed here first), so the registry
can refuse a corrupted upload and store blobs under their content address. Downloads are
verified again here, and a file appears under ``dest`` only once complete and verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from services.common.errors import DataLoss, InvalidArgument
from services.common.stubs import registry_pb2

KINDS = {
    "dataset": registry_pb2.ARTIFACT_KIND_DATASET,
    "adapter": registry_pb2.ARTIFACT_KIND_ADAPTER,
    "model": registry_pb2.ARTIFACT_KIND_MODEL,
}
CHUNK_BYTES = 2 * 1024 * 1024
HASH_BLOCK = 4 * 1024 * 1024


def kind_value(kind: str) -> int:
    try:
        return KINDS[kind]
    except KeyError:
        raise InvalidArgument(
            f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}", param="kind"
        ) from None


def kind_label(kind: int) -> str:
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
    """Receives a download: writes each file to a staging folder beside ``dest``, checks its
    size and sha256, then renames it into ``dest``. Blocking file I/O."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        self.version: registry_pb2.ArtifactVersion | None = None
        self._files: list[registry_pb2.FileEntry] = []
        self._index = -1
        self._file = None
        self._digest = hashlib.sha256()
        self._written = 0
        self._staging: Path | None = None

    def start(self, version: registry_pb2.ArtifactVersion) -> None:
        self.version = version
        self._files = list(version.manifest.files)
        self.dest.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(dir=self.dest.parent, prefix=f".{self.dest.name}."))
        self._next_file()

    def _next_file(self) -> None:
        """Finish the current file, then open the next one (zero-byte files finish at once)."""
        while True:
            if self._file is not None:
                self._complete()
            self._index += 1
            if self._index >= len(self._files):
                return
            entry = self._files[self._index]
            part = self._staging / f"{self._index}.part"
            self._file = open(part, "wb")  # noqa: SIM115 - closed in _complete/abort
            self._digest, self._written = hashlib.sha256(), 0
            if entry.size_bytes > 0:
                return

    def chunk(self, chunk: registry_pb2.FileChunk) -> None:
        if self._index >= len(self._files):
            raise DataLoss("download sent more data than its manifest lists")
        entry = self._files[self._index]
        data = chunk.data  # each access of a bytes field copies it: once is enough
        if chunk.path != entry.path or self._written + len(data) > entry.size_bytes:
            raise DataLoss(f"download stream does not match its manifest at {entry.path}")
        self._file.write(data)
        self._digest.update(data)
        self._written += len(data)
        if self._written == entry.size_bytes:
            self._next_file()

    def _complete(self) -> None:
        entry = self._files[self._index]
        # Renamed into place only after the digest matches, so no reader ever sees a partial or
        # wrong file. No fsync: this is a cache of what the registry keeps durably (like pip or
        # huggingface_hub downloads), and an fsync per pull would cost more than the transfer.
        self._file.close()
        self._file = None
        if self._digest.hexdigest() != entry.sha256:
            raise DataLoss(f"{entry.path}: received bytes do not match sha256 {entry.sha256}")
        target = self.dest / entry.path
        if not target.resolve().is_relative_to(self.dest.resolve()):
            raise DataLoss(f"refusing to write outside {self.dest}: {entry.path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._staging / f"{self._index}.part", target)

    def finish(self) -> registry_pb2.ArtifactVersion:
        if self.version is None or self._index < len(self._files):
            raise DataLoss("download ended before every file arrived")
        self.close()
        return self.version

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
