"""The registry's logic, between the gRPC servicer and the stores.

Publishing writes in an order that makes a crash harmless: every blob first (each renamed or
completed into place only when whole and matching its sha256), then the manifest, then the
metadata row in one transaction. Until that row commits nothing is visible; what a crash
leaves behind is orphan blobs, which the GC removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence

from services.common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    shown,
)
from services.common.refs import check_version
from services.common.stubs import registry_pb2
from services.registry import convert
from services.registry.adapter_tensors import check_adapter_shapes
from services.registry.metadata import FileRow, MetadataStore, NewVersion, VersionRow
from services.registry.names import check_alias, check_name, kind_name, parse_ref
from services.registry.presigned import DirectDownloads
from services.registry.promotion_gate import Promotion, promote
from services.registry.settings import RegistrySettings
from services.registry.storage import BlobStore, blob_key, manifest_key
from services.registry.validation import ADAPTER_WEIGHTS, UploadPlan, plan_upload

log = logging.getLogger(__name__)

# Lineage fields that name another version, with the kind they name.
LINEAGE_REFS = {
    "dataset": "dataset",
    "validation_dataset": "dataset",
    "base_model": "model",
    "adapter": "adapter",
    "eval_set": "dataset",
}
# Repeated lineage fields that name versions.
LINEAGE_REF_LISTS = {"databases": "dataset"}


class ArtifactRegistry:
    def __init__(self, settings: RegistrySettings, store: BlobStore, metadata: MetadataStore):
        self.settings = settings
        self.store = store
        self.metadata = metadata
        self.direct = DirectDownloads(store, settings)

    # --- publish ------------------------------------------------------------------------

    async def upload(
        self, header: registry_pb2.UploadHeader, chunks: AsyncIterator[registry_pb2.FileChunk]
    ) -> VersionRow:
        """Validate, store and publish one version from a header and its files' chunks."""
        plan = plan_upload(
            header,
            max_upload_bytes=self.settings.max_upload_bytes,
            max_example_chars=self.settings.max_example_chars,
        )
        lineage = registry_pb2.Lineage()
        lineage.CopyFrom(header.lineage)
        # Everything knowable from the header is checked before the first byte is stored.
        await self._pin_lineage(lineage)
        if plan.kind == "model" and lineage.adapter:
            await self._check_merge_lineage(lineage)
        base_model = ""
        if plan.kind == "adapter" and header.base_model:
            base_model = await self._resolve_base_model(header.base_model)

        loop = asyncio.get_running_loop()
        for entry in header.files:
            data = _file_bytes(chunks, entry)
            try:
                await asyncio.to_thread(self._store_file, plan, entry, _blocking(data, loop))
            finally:
                # On cancellation the worker may still be inside a step of ``data``; it ends
                # on its own when the cancelled call's stream ends.
                with contextlib.suppress(RuntimeError):
                    await data.aclose()
        if await anext(chunks, None) is not None:
            raise InvalidArgument("data after the last file of the header", param="chunk")

        info = plan.info()
        if isinstance(info, registry_pb2.AdapterInfo):
            base_model = base_model or await self._resolve_base_model(plan.base_model_hint())
            await self._check_fits_base_model(plan, info.peft_type, base_model)
            info.base_model = base_model
            if not lineage.base_model:
                lineage.base_model = base_model
        elif isinstance(info, registry_pb2.ModelInfo) and lineage.adapter:
            info.merged_from_adapter = lineage.adapter  # an export: pinned above
        elif isinstance(info, registry_pb2.EvaluationInfo):
            _check_evaluation_lineage(info, lineage, plan)

        files = [FileRow(f.path, f.size_bytes, f.sha256) for f in header.files]
        manifest = convert.manifest_json(files)
        digest = hashlib.sha256(manifest).hexdigest()
        await asyncio.to_thread(
            self.store.put, manifest_key(digest), [manifest], size=len(manifest), sha256=digest
        )
        row = await asyncio.to_thread(
            self.metadata.publish,
            NewVersion(
                kind=plan.kind,
                name=header.name,
                manifest_sha256=digest,
                total_size=sum(f.size for f in files),
                files=files,
                description=header.description,
                lineage_json=convert.lineage_to_json(lineage),
                info_json=convert.info_to_json(info),
                base_model=base_model,
                labels=plan.labels,
            ),
        )
        log.info("published %s %s@%d (%d bytes)", row.kind, row.name, row.version, row.total_size)
        return row

    def _store_file(self, plan: UploadPlan, entry: registry_pb2.FileEntry, data: Iterator[bytes]):
        """Runs in a worker thread: hash, check and store one file as its bytes arrive."""
        check = plan.checks[entry.path]

        def checked() -> Iterator[bytes]:
            for piece in data:
                check.feed(piece)
                yield piece
            check.finish()  # before the store sees the end: a bad file is never committed

        # Always written, even when the blob exists: rewriting refreshes its age, so the GC
        # cannot collect it (as an orphan of a deleted version) while this upload publishes.
        try:
            self.store.put(
                blob_key(entry.sha256), checked(), size=entry.size_bytes, sha256=entry.sha256
            )
        except InvalidArgument as exc:
            if exc.param:  # already names its field (a content check of the file)
                raise
            raise InvalidArgument(
                f"file {shown(entry.path)}: {exc.message}", param="files", code=exc.code
            ) from None

    async def _resolve_base_model(self, hint: str) -> str:
        if not hint:
            raise InvalidArgument(
                "an adapter needs its base model: set base_model (a model in this registry)",
                param="base_model",
            )
        # PEFT records the folder it trained from; tuneplex keeps models in folders named
        # after them (<home>/models/<name>), so the last component is the model's name.
        name = hint.rstrip("/").rsplit("/", 1)[-1] if "/" in hint else hint
        # A malformed ref is the caller's typo (INVALID_ARGUMENT); a well-formed one that names
        # no model is a missing precondition.
        ref = parse_ref(name, param="base_model")
        try:
            row = await asyncio.to_thread(self.metadata.resolve, "model", ref)
        except NotFound:
            raise FailedPrecondition(
                f"unknown base model {shown(hint)}: the registry has no such model; push it first "
                "(`tuneplex models push`)",
                param="base_model",
                code="base_model_not_found",
            ) from None
        return f"{row.name}@{row.version}"

    async def _check_fits_base_model(
        self, plan: UploadPlan, peft_type: str, base_model: str
    ) -> None:
        """An adapter's tensor shapes against the config.json of the base model version it names:
        the name alone does not say that the adapter was trained on that model."""
        row = await asyncio.to_thread(self.metadata.resolve, "model", parse_ref(base_model))
        config = next((f for f in row.files if f.path == "config.json"), None)
        if config is None:
            return
        raw = await asyncio.to_thread(
            b"".join, _verified(self.store, config, self.settings.chunk_bytes)
        )
        check_adapter_shapes(
            ADAPTER_WEIGHTS, peft_type, plan.tensor_shapes(), json.loads(raw), base_model
        )

    async def _pin_lineage(self, lineage: registry_pb2.Lineage) -> None:
        """Replace each reference in ``lineage`` by the exact version it names now."""
        for field, kind in LINEAGE_REFS.items():
            ref = getattr(lineage, field)
            if not ref:
                continue
            parsed = parse_ref(ref, param=f"lineage.{field}")  # malformed: InvalidArgument
            try:
                row = await asyncio.to_thread(self.metadata.resolve, kind, parsed)
            except NotFound:
                raise FailedPrecondition(
                    f"lineage.{field} names {kind} {shown(ref)}, which the registry does not have",
                    param=f"lineage.{field}",
                ) from None
            setattr(lineage, field, f"{row.name}@{row.version}")
        for field, kind in LINEAGE_REF_LISTS.items():
            refs = getattr(lineage, field)
            for i, ref in enumerate(refs):
                parsed = parse_ref(ref, param=f"lineage.{field}[{i}]")
                try:
                    row = await asyncio.to_thread(self.metadata.resolve, kind, parsed)
                except NotFound:
                    raise FailedPrecondition(
                        f"lineage.{field}[{i}] names {kind} {shown(ref)}, which the registry "
                        "does not have",
                        param=f"lineage.{field}[{i}]",
                    ) from None
                refs[i] = f"{row.name}@{row.version}"

    async def _check_merge_lineage(self, lineage: registry_pb2.Lineage) -> None:
        """A model merged from an adapter was merged into that adapter's base: fill
        ``lineage.base_model`` from it, or refuse a lineage that names another base."""
        row = await asyncio.to_thread(self.metadata.resolve, "adapter", parse_ref(lineage.adapter))
        base = convert.version_to_proto(row).adapter.base_model
        if not lineage.base_model:
            lineage.base_model = base
        elif base and lineage.base_model != base:
            raise FailedPrecondition(
                f"lineage.base_model is {lineage.base_model} but adapter {lineage.adapter} was "
                f"trained on {base}: a merge of it can only be a merge into {base}",
                param="lineage.base_model",
            )

    # --- read ---------------------------------------------------------------------------

    async def resolve(self, kind: int, ref: str) -> VersionRow:
        return await asyncio.to_thread(
            self.metadata.resolve, kind_name(kind), parse_ref(ref, param="ref")
        )

    def files_to_send(self, row: VersionRow, paths: Sequence[str]) -> list[FileRow]:
        """The files of ``row`` a download asked for, in manifest order; all when none named.
        Checked before the first message, so a wrong path costs no transfer."""
        if not paths:
            return list(row.files)
        listed = {f.path for f in row.files}
        for path in paths:
            if path not in listed:
                raise NotFound(
                    f"{row.kind} {row.name}@{row.version} has no file {shown(path)}",
                    param="paths",
                    code="file_not_found",
                )
        wanted = set(paths)
        return [f for f in row.files if f.path in wanted]

    async def file_chunks(self, entry: FileRow) -> AsyncIterator[bytes]:
        """A file's bytes from the store, verified against its sha256 as they stream. The last
        chunk is held back until the digest matches, so a corrupted file never arrives whole."""
        it = _verified(self.store, entry, self.settings.chunk_bytes)
        # Read one chunk ahead in a worker thread, so storage reads overlap network sends.
        pending = asyncio.ensure_future(asyncio.to_thread(next, it, None))
        try:
            while (data := await pending) is not None:
                pending = asyncio.ensure_future(asyncio.to_thread(next, it, None))
                yield data
        finally:
            pending.cancel()

    async def lineage(self, kind: int, ref: str) -> list[VersionRow]:
        """The version, then each version its lineage names, breadth first, each once. For an
        evaluation: the evaluation, the evaluated version's chain, then the eval set (and the
        databases its graders ran on)."""
        start = await self.resolve(kind, ref)
        if start.kind != "evaluation":
            return await self._chain([start], set())
        version = convert.version_to_proto(start)
        lineage, info = version.lineage, version.evaluation
        seen = {(start.kind, start.name, start.version)}
        is_adapter = info.model_kind == registry_pb2.ARTIFACT_KIND_ADAPTER
        evaluated = await self._find("adapter" if is_adapter else "model", info.model)
        chain = [start] + (await self._chain([evaluated], seen) if evaluated else [])
        for data_ref in (lineage.eval_set, *lineage.databases):
            found = await self._find("dataset", data_ref)
            if found and (key := (found.kind, found.name, found.version)) not in seen:
                seen.add(key)
                chain.append(found)
        return chain

    async def _find(self, kind: str, ref: str) -> VersionRow | None:
        if not ref:
            return None
        try:
            return await asyncio.to_thread(self.metadata.resolve, kind, parse_ref(ref))
        except (NotFound, InvalidArgument):
            return None  # deleted since: the lineage still names it, the chain skips it

    async def _chain(
        self, start: list[VersionRow], seen: set[tuple[str, str, int]]
    ) -> list[VersionRow]:
        chain, queue = list(start), list(start)
        seen.update((r.kind, r.name, r.version) for r in start)
        while queue:
            row = queue.pop(0)
            lineage = convert.version_to_proto(row).lineage
            for field, ref_kind in LINEAGE_REFS.items():
                found = await self._find(ref_kind, getattr(lineage, field))
                if found is None:
                    continue
                key = (found.kind, found.name, found.version)
                if key not in seen:
                    seen.add(key)
                    chain.append(found)
                    queue.append(found)
        return chain

    # --- manage -------------------------------------------------------------------------

    async def set_alias(self, kind: int, name: str, alias: str, version: int):
        check_name(name)
        check_alias(alias)
        check_version(version)
        return await asyncio.to_thread(
            self.metadata.set_alias, kind_name(kind), name, alias, version
        )

    async def promote(self, request: registry_pb2.PromoteAliasRequest) -> Promotion:
        """Move an alias through the evaluation gate (``promotion_gate``)."""
        return await asyncio.to_thread(promote, self.metadata, request)

    async def delete_alias(self, kind: int, name: str, alias: str) -> None:
        check_name(name)
        await asyncio.to_thread(self.metadata.delete_alias, kind_name(kind), name, alias)

    async def delete(self, kind: int, name: str, version: int, force: bool) -> None:
        check_name(name)
        if version < 0:
            raise InvalidArgument("version must be 0 (all) or more", param="version")
        await asyncio.to_thread(self.metadata.delete, kind_name(kind), name, version, force)


def _check_evaluation_lineage(
    info: registry_pb2.EvaluationInfo, lineage: registry_pb2.Lineage, plan: UploadPlan
) -> None:
    """An evaluation's summary and its (pinned) lineage must name the same versions: the gate
    trusts the summary's scores as those of the lineage's model on the lineage's eval set."""
    summary = plan.summary()
    field = "adapter" if info.model_kind == registry_pb2.ARTIFACT_KIND_ADAPTER else "base_model"
    pairs = [
        (field, info.model, getattr(lineage, field)),
        ("eval_set", info.eval_set, lineage.eval_set),
    ]
    for name, said, pinned in pairs:
        if not pinned:
            raise InvalidArgument(
                f"an evaluation's lineage must name what it scored: set lineage.{name} "
                f"(summary.json says {shown(said, 80)})",
                param=f"lineage.{name}",
            )
        if said != pinned:
            raise InvalidArgument(
                f"summary.json scores {shown(said, 80)} but lineage.{name} is {pinned}: an "
                "evaluation's summary and lineage must name the same version",
                param=f"lineage.{name}",
            )
    if summary is not None and sorted(summary.databases) != sorted(lineage.databases):
        raise InvalidArgument(
            f"summary.json names databases {sorted(summary.databases)} but lineage.databases "
            f"is {sorted(lineage.databases)}",
            param="lineage.databases",
        )


async def _file_bytes(
    chunks: AsyncIterator[registry_pb2.FileChunk], entry: registry_pb2.FileEntry
) -> AsyncGenerator[bytes, None]:
    """The next ``entry.size_bytes`` bytes of the upload stream, which must all be chunks of
    ``entry.path``: files arrive whole and in header order."""
    left = entry.size_bytes
    while left > 0:
        chunk = await anext(chunks, None)
        if chunk is None:
            raise InvalidArgument(f"upload ended {left} bytes short of {entry.path}", param="chunk")
        if chunk.path != entry.path:
            raise InvalidArgument(
                f"expected bytes of {entry.path}, got a chunk of {shown(chunk.path)}", param="chunk"
            )
        data = chunk.data  # each access of a bytes field copies it: once is enough
        if len(data) > left:
            raise InvalidArgument(
                f"{entry.path}: more bytes than the {entry.size_bytes} declared", param="chunk"
            )
        left -= len(data)
        yield data


def _blocking(
    agen: AsyncGenerator[bytes, None], loop: asyncio.AbstractEventLoop
) -> Iterator[bytes]:
    """Iterate an async generator from a worker thread, each step run on the event loop.
    The caller closes ``agen`` on the loop: waiting for the loop here could deadlock when this
    generator is finalized on the loop's own thread."""
    while True:
        try:
            # ``__anext__`` rather than ``anext()``: the one typed as the coroutine that
            # run_coroutine_threadsafe takes.
            yield asyncio.run_coroutine_threadsafe(agen.__anext__(), loop).result()
        except StopAsyncIteration:
            return


def _verified(store: BlobStore, entry: FileRow, chunk_bytes: int) -> Iterator[bytes]:
    digest, seen, held = hashlib.sha256(), 0, None
    try:
        source = store.get(blob_key(entry.sha256), chunk_bytes)
    except NotFound:
        raise DataLoss(f"{entry.path}: its blob {entry.sha256} is missing from storage") from None
    for data in source:
        digest.update(data)
        seen += len(data)
        if held is not None:
            yield held
        held = data
    if seen != entry.size or digest.hexdigest() != entry.sha256:
        log.error("corrupted blob %s for %s", entry.sha256, entry.path)
        raise DataLoss(
            f"{entry.path}: stored bytes do not match their sha256 {entry.sha256}; refusing to "
            "serve them",
            code="blob_corrupted",
        )
    if held is not None:
        yield held
