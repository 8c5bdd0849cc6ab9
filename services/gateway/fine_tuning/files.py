"""`/v1/files`: OpenAI files kept as registry datasets.

A file `file-<24 hex>` is the dataset of that name, version 1, holding one `data.jsonl`, with
the labels owner, purpose and the name it was uploaded under. The registry checks it line by
line as it streams in (its errors name the line and the rule; they are reworded here to name
the user's file, never the stored one); OpenAI's minimum of 10 examples for `fine-tune` is the
gateway's rule. A file is `processed` as soon as it is stored: it is checked on the way in.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from services.common.errors import InvalidArgument, NotFound, TuneplexError, shown
from services.common.stubs import registry_pb2
from services.gateway.fine_tuning import names
from services.gateway.fine_tuning.paging import after_cursor, page_fields
from services.gateway.fine_tuning.protocol import FileDeleted, FileList, FileObject
from services.gateway.fine_tuning.upstream import registry_outage

if TYPE_CHECKING:
    from services.client.registry import AsyncRegistryClient

PURPOSES = ("fine-tune", "evals")
STORED_NAME = "data.jsonl"
MIN_FINE_TUNE_EXAMPLES = 10
MAX_FILENAME_CHARS = 256
MAX_LIST_LIMIT = 10_000


def not_found(file_id: str, param: str = "file_id") -> NotFound | InvalidArgument:
    """An unknown (or another owner's) file: 404 where it is the resource asked for, 400 where
    it is a field of a request (`training_file`), as OpenAI answers."""
    message = f"No such File object: {shown(file_id)}"
    if param == "file_id":
        return NotFound(message, param=param, code="file_not_found")
    return InvalidArgument(message, param=param, code="invalid_file")


def file_object(version: registry_pb2.ArtifactVersion) -> FileObject:
    labels = version.labels
    return FileObject(
        id=version.name,
        bytes=version.manifest.total_size_bytes,
        created_at=version.create_time.seconds,
        filename=labels.get(names.FILENAME_LABEL, STORED_NAME),
        purpose=labels.get(names.PURPOSE_LABEL, "fine-tune"),
    )


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise InvalidArgument(
            f"purpose {shown(purpose)} is not supported here; use one of {', '.join(PURPOSES)}",
            param="purpose",
            code="invalid_purpose",
        )
    return purpose


def clean_filename(filename: str | None) -> str:
    name = (filename or STORED_NAME).replace("\\", "/").rpartition("/")[2] or STORED_NAME
    name = "".join(c if c.isprintable() else "?" for c in name)
    return name[:MAX_FILENAME_CHARS]


@dataclass
class FileStore:
    registry: AsyncRegistryClient

    async def create(self, owner: str, filename: str, purpose: str, data: BinaryIO) -> FileObject:
        check_purpose(purpose)
        file_id = names.new_file_id()
        labels = {
            names.OWNER_LABEL: owner,
            names.PURPOSE_LABEL: purpose,
            names.FILENAME_LABEL: filename,
        }
        with tempfile.TemporaryDirectory(prefix="tuneplex-upload-") as tmp:
            path = Path(tmp) / STORED_NAME
            lines = await asyncio.to_thread(_copy, data, path)
            # Before the push, so a file refused for its size is never visible, even briefly.
            if purpose == "fine-tune" and lines < MIN_FINE_TUNE_EXAMPLES:
                raise InvalidArgument(
                    f"{filename} has {lines} examples; a fine-tune file needs at least "
                    f"{MIN_FINE_TUNE_EXAMPLES} (rule: min_examples, as OpenAI's)",
                    param="file",
                    code="invalid_file",
                )
            try:
                with registry_outage("upload"):
                    version = await self.registry.push(
                        "dataset", file_id, path, labels=labels, description=filename
                    )
            except InvalidArgument as exc:
                raise _as_file_error(exc, filename) from None
        return file_object(version)

    async def version(
        self, owner: str, file_id: str, *, param: str = "file_id"
    ) -> registry_pb2.ArtifactVersion:
        """The dataset version of `file_id` when `owner` owns it; NotFound otherwise (another
        owner's file reads exactly as an unknown one)."""
        if not names.is_file_id(file_id):
            raise not_found(file_id, param)
        try:
            with registry_outage("resolve"):
                version = await self.registry.resolve("dataset", names.file_dataset_ref(file_id))
        except (NotFound, InvalidArgument):
            raise not_found(file_id, param) from None
        if version.labels.get(names.OWNER_LABEL) != owner:
            raise not_found(file_id, param)
        return version

    async def retrieve(self, owner: str, file_id: str) -> FileObject:
        return file_object(await self.version(owner, file_id))

    async def content(self, owner: str, file_id: str) -> bytes:
        await self.version(owner, file_id)
        with registry_outage("read"):
            return await self.registry.read_file(
                "dataset", names.file_dataset_ref(file_id), STORED_NAME
            )

    async def delete(self, owner: str, file_id: str) -> FileDeleted:
        await self.version(owner, file_id)
        await self._drop(file_id)
        return FileDeleted(id=file_id)

    async def list(
        self,
        owner: str,
        *,
        purpose: str | None = None,
        limit: int = MAX_LIST_LIMIT,
        after: str | None = None,
        order: str = "desc",
    ) -> FileList:
        wanted = {names.OWNER_LABEL: owner}
        if purpose:
            wanted[names.PURPOSE_LABEL] = purpose
        with registry_outage("list"):
            artifacts = await self.registry.list("dataset", labels=wanted)
        files = [file_object(a.latest) for a in artifacts if names.is_file_id(a.name)]
        files.sort(key=lambda f: (f.created_at, f.id), reverse=order == "desc")
        files = after_cursor(files, after, lambda f: f.id)
        page = files[:limit]
        return FileList(data=page, **page_fields(page, len(files) > len(page)))

    async def _drop(self, file_id: str) -> None:
        with registry_outage("delete"):
            await self.registry.delete("dataset", file_id, force=True)


def _copy(data: BinaryIO, path: Path) -> int:
    """Copy the upload to ``path``; returns its non-blank lines (one example each in JSONL)."""
    lines, open_line = 0, False  # open_line: the current line has a non-blank byte so far
    with path.open("wb") as out:
        # In chunks, not by line: one enormous line must not be read into memory whole.
        while chunk := data.read(1 << 20):
            out.write(chunk)
            *ended, rest = chunk.split(b"\n")
            for piece in ended:
                lines += open_line or bool(piece.strip())
                open_line = False
            open_line = open_line or bool(rest.strip())
    return lines + open_line


def _as_file_error(exc: TuneplexError, filename: str) -> InvalidArgument:
    """The registry's refusal of the stored `data.jsonl`, naming the user's file instead."""
    message = exc.message.replace(STORED_NAME, filename, 1)
    return InvalidArgument(message, param="file", code=exc.code or "invalid_file")
