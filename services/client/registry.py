"""Python SDK of the registry: ``RegistryClient`` (blocking, for the CLI and the trainer's
worker) and ``AsyncRegistryClient`` (grpc.aio, for the gateway). Same methods, same errors:
the domain errors of ``services.common.errors``. File handling lives in ``transfer.py``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc

from services.client import direct_download
from services.client.direct_download import pinned_ref
from services.client.grpc_channel import AsyncClient, BlockingClient, domain_errors
from services.client.transfer import (
    KINDS,
    FileReader,
    PullWriter,
    file_entry,
    file_requests,
    kind_label,
    kind_value,
    local_files,
    upload_header,
)
from services.common.errors import Unavailable, from_grpc_error
from services.common.stubs import registry_pb2, registry_pb2_grpc

__all__ = ["KINDS", "AsyncRegistryClient", "RegistryClient", "kind_label", "kind_value"]

log = logging.getLogger(__name__)


def _falling_back(answer: registry_pb2.GetDownloadUrlsResponse, exc: Unavailable) -> None:
    log.warning(
        "pulling %s straight from object storage failed (%s); streaming it through the "
        "registry instead", pinned_ref(answer.version), exc.message,
    )


def _ref_request(cls, kind: str, ref: str):
    return cls(kind=kind_value(kind), ref=ref)


def _list_request(
    kind: str | None, labels: Mapping[str, str] | None, page_token: str, page_size: int = 0
) -> registry_pb2.ListArtifactsRequest:
    kind_or_any = kind_value(kind) if kind else registry_pb2.ARTIFACT_KIND_UNSPECIFIED
    return registry_pb2.ListArtifactsRequest(
        kind=kind_or_any, labels=labels or {}, page_token=page_token, page_size=page_size
    )


def _file_request(kind: str, ref: str, path: str) -> registry_pb2.DownloadArtifactRequest:
    return registry_pb2.DownloadArtifactRequest(kind=kind_value(kind), ref=ref, paths=[path])


def _urls_request(
    kind: registry_pb2.ArtifactKind | str, ref: str, paths: tuple[str, ...] = ()
) -> registry_pb2.GetDownloadUrlsRequest:
    value = kind_value(kind) if isinstance(kind, str) else kind
    return registry_pb2.GetDownloadUrlsRequest(kind=value, ref=ref, paths=paths)


def _unless_unimplemented(exc: grpc.RpcError) -> None:
    """A registry from before direct transfers answers UNIMPLEMENTED: the pull streams then."""
    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
        raise from_grpc_error(exc) from None


def _feed(sink: PullWriter | FileReader, message: registry_pb2.DownloadArtifactResponse) -> None:
    """One message of a DownloadArtifact stream: the version first, then file chunks."""
    if message.WhichOneof("payload") == "version":
        sink.start(message.version)
    else:
        sink.chunk(message.chunk)


def _drain(call, sink: PullWriter | FileReader) -> None:
    """Feed a whole DownloadArtifact stream to ``sink``; registry errors become ours."""
    with domain_errors():
        for message in call:
            _feed(sink, message)


def _promote_request(
    kind: str,
    name: str,
    alias: str,
    version: int,
    eval_set: str,
    graders_sha256: str,
    margin: float,
) -> registry_pb2.PromoteAliasRequest:
    return registry_pb2.PromoteAliasRequest(
        kind=kind_value(kind),
        name=name,
        alias=alias,
        version=version,
        eval_set=eval_set,
        graders_sha256=graders_sha256,
        margin=margin,
    )


def _is_evaluation_of(
    version: registry_pb2.ArtifactVersion, model_kind: int, model: str, eval_set: str | None
) -> bool:
    info = version.evaluation
    return (
        info.model_kind == model_kind
        and info.model == model
        and (eval_set is None or info.eval_set == eval_set)
    )


def _newest_first(
    versions: list[registry_pb2.ArtifactVersion],
) -> list[registry_pb2.ArtifactVersion]:
    return sorted(
        versions,
        key=lambda v: (v.create_time.seconds, v.create_time.nanos, v.name, v.version),
        reverse=True,
    )


class RegistryClient(BlockingClient):
    """Blocking client. ``target`` is ``host:port``; use as a context manager or ``close()``."""

    def __init__(self, target: str, api_key: str | None = None, timeout: float | None = None):
        super().__init__(registry_pb2_grpc.RegistryServiceStub, target, api_key, timeout)

    def push(
        self,
        kind: str,
        name: str,
        path: Path,
        *,
        base_model: str | None = None,
        description: str = "",
        lineage: registry_pb2.Lineage | None = None,
        source: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> registry_pb2.ArtifactVersion:
        """Upload ``path`` (a file or a folder) as the next version of ``kind/name``, with
        ``labels`` on it (``services/common/labels.py``; a bad one is INVALID_ARGUMENT naming it,
        before any byte is stored)."""
        files = local_files(path)
        entries = [file_entry(rel, p) for rel, p in files]
        header = upload_header(
            kind,
            name,
            entries,
            base_model=base_model,
            description=description,
            lineage=lineage,
            source=source,
        )
        header.header.labels.update(labels or {})

        def requests():
            yield header
            yield from file_requests(files)

        with domain_errors():
            return self._stub.UploadArtifact(requests(), metadata=self._metadata).version

    def pull(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        """Download ``ref`` into ``dest``, which gets the files only once all are complete and
        verified; on any error ``dest`` is left as it was. Straight from object storage when the
        registry offers presigned URLs (``download_urls``), else streamed through it."""
        answer = self.download_urls(kind, ref)
        if answer is not None and answer.direct_transfers:
            try:
                return self._pull_direct(answer, dest)
            except Unavailable as exc:  # storage unreachable from here: dest is untouched
                _falling_back(answer, exc)
        return self._pull_streamed(kind, pinned_ref(answer.version) if answer else ref, dest)

    def download_urls(
        self, kind: str, ref: str, paths: tuple[str, ...] = ()
    ) -> registry_pb2.GetDownloadUrlsResponse | None:
        """The version ``ref`` names with presigned GET URLs of its files (``direct_transfers``
        false: the registry offers none); None from a registry that predates them."""
        request = _urls_request(kind, ref, paths)
        try:
            return self._stub.GetDownloadUrls(
                request, metadata=self._metadata, timeout=self.timeout
            )
        except grpc.RpcError as exc:
            _unless_unimplemented(exc)
            return None

    def _pull_direct(
        self, answer: registry_pb2.GetDownloadUrlsResponse, dest: Path
    ) -> registry_pb2.ArtifactVersion:
        version = answer.version

        def refresh(path: str) -> registry_pb2.GetDownloadUrlsResponse:
            request = _urls_request(version.kind, pinned_ref(version), (path,))
            return self._unary("GetDownloadUrls", request)

        return direct_download.pull(dest, answer, refresh)

    def _pull_streamed(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        writer = PullWriter(dest)
        request = _ref_request(registry_pb2.DownloadArtifactRequest, kind, ref)
        call = self._stub.DownloadArtifact(request, metadata=self._metadata)
        try:
            _drain(call, writer)
            return writer.finish()
        finally:
            call.cancel()  # a no-op once complete; stops the stream after a local error
            writer.close()

    def read_file(self, kind: str, ref: str, path: str) -> bytes:
        """The bytes of one file of ``ref`` (e.g. a model's ``config.json``), verified against
        the manifest's sha256, without downloading the rest; NotFound naming ``path`` if the
        version has no such file. Held in memory: meant for metadata files."""
        reader = FileReader(path)
        call = self._stub.DownloadArtifact(_file_request(kind, ref, path), metadata=self._metadata)
        try:
            _drain(call, reader)
            return reader.finish()
        finally:
            call.cancel()

    def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        request = _ref_request(registry_pb2.ResolveArtifactRequest, kind, ref)
        return self._unary("ResolveArtifact", request).version

    def get(self, kind: str, name: str) -> registry_pb2.Artifact:
        request = registry_pb2.GetArtifactRequest(kind=kind_value(kind), name=name)
        return self._unary("GetArtifact", request).artifact

    def list(
        self, kind: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> list[registry_pb2.Artifact]:
        """Every artifact (of ``kind``), each with its latest version; with ``labels``, only
        those whose latest version carries every pair."""
        out, token = [], ""
        while True:
            response = self._unary("ListArtifacts", _list_request(kind, labels, token))
            out.extend(response.artifacts)
            token = response.next_page_token
            if not token:
                return out

    def list_page(
        self,
        kind: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[builtins.list[registry_pb2.Artifact], str]:
        """One page of ``list`` in (kind, name) order and the token of the next ("" at the
        end), for a caller that pages itself."""
        request = _list_request(kind, labels, page_token, page_size)
        response = self._unary("ListArtifacts", request)
        return list(response.artifacts), response.next_page_token

    def versions(self, kind: str, name: str) -> builtins.list[registry_pb2.ArtifactVersion]:
        request = registry_pb2.ListArtifactVersionsRequest(kind=kind_value(kind), name=name)
        return list(self._unary("ListArtifactVersions", request).versions)

    def set_alias(self, kind: str, name: str, alias: str, version: int) -> registry_pb2.Artifact:
        request = registry_pb2.SetAliasRequest(
            kind=kind_value(kind), name=name, alias=alias, version=version
        )
        return self._unary("SetAlias", request).artifact

    def delete_alias(self, kind: str, name: str, alias: str) -> None:
        request = registry_pb2.DeleteAliasRequest(kind=kind_value(kind), name=name, alias=alias)
        self._unary("DeleteAlias", request)

    def delete(self, kind: str, name: str, version: int = 0, force: bool = False) -> None:
        request = registry_pb2.DeleteArtifactRequest(
            kind=kind_value(kind), name=name, version=version, force=force
        )
        self._unary("DeleteArtifact", request)

    def lineage(self, kind: str, ref: str) -> builtins.list[registry_pb2.ArtifactVersion]:
        request = _ref_request(registry_pb2.GetLineageRequest, kind, ref)
        return list(self._unary("GetLineage", request).chain)

    def promote(
        self,
        kind: str,
        name: str,
        alias: str,
        version: int,
        eval_set: str,
        graders_sha256: str = "",
        margin: float = 0.0,
    ) -> registry_pb2.PromoteAliasResponse:
        """Move ``alias`` to ``version`` through the evaluation gate: its newest evaluation on
        ``eval_set`` must score at least the holder's (same graders) plus ``margin``."""
        request = _promote_request(kind, name, alias, version, eval_set, graders_sha256, margin)
        return self._unary("PromoteAlias", request)

    def evaluations(
        self, model_kind: str, model: str, eval_set: str | None = None
    ) -> builtins.list[registry_pb2.ArtifactVersion]:
        """Evaluations of ``model`` (a pinned ``name@version`` of kind ``model_kind``), on
        ``eval_set`` (pinned) if given, newest first."""
        wanted = kind_value(model_kind)
        found = [
            v
            for artifact in self.list("evaluation")
            for v in self.versions("evaluation", artifact.name)
            if _is_evaluation_of(v, wanted, model, eval_set)
        ]
        return _newest_first(found)


class AsyncRegistryClient(AsyncClient):
    """The same API as ``RegistryClient`` with ``async def`` methods, over ``grpc.aio``."""

    def __init__(self, target: str, api_key: str | None = None, timeout: float | None = None):
        super().__init__(registry_pb2_grpc.RegistryServiceStub, target, api_key, timeout)

    async def push(
        self,
        kind: str,
        name: str,
        path: Path,
        *,
        base_model: str | None = None,
        description: str = "",
        lineage: registry_pb2.Lineage | None = None,
        source: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> registry_pb2.ArtifactVersion:
        files = await asyncio.to_thread(local_files, path)
        entries = [await asyncio.to_thread(file_entry, rel, p) for rel, p in files]
        header = upload_header(
            kind,
            name,
            entries,
            base_model=base_model,
            description=description,
            lineage=lineage,
            source=source,
        )
        header.header.labels.update(labels or {})

        async def requests() -> AsyncIterator[registry_pb2.UploadArtifactRequest]:
            yield header
            chunks = file_requests(files)
            while (request := await asyncio.to_thread(next, chunks, None)) is not None:
                yield request

        with domain_errors():
            return (await self._stub.UploadArtifact(requests(), metadata=self._metadata)).version

    async def pull(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        answer = await self.download_urls(kind, ref)
        if answer is not None and answer.direct_transfers:
            try:
                return await self._pull_direct(answer, dest)
            except Unavailable as exc:  # storage unreachable from here: dest is untouched
                _falling_back(answer, exc)
        return await self._pull_streamed(kind, pinned_ref(answer.version) if answer else ref, dest)

    async def download_urls(
        self, kind: str, ref: str, paths: tuple[str, ...] = ()
    ) -> registry_pb2.GetDownloadUrlsResponse | None:
        request = _urls_request(kind, ref, paths)
        try:
            return await self._stub.GetDownloadUrls(
                request, metadata=self._metadata, timeout=self.timeout
            )
        except grpc.RpcError as exc:
            _unless_unimplemented(exc)
            return None

    async def _pull_direct(
        self, answer: registry_pb2.GetDownloadUrlsResponse, dest: Path
    ) -> registry_pb2.ArtifactVersion:
        version = answer.version
        loop = asyncio.get_running_loop()

        def refresh(path: str) -> registry_pb2.GetDownloadUrlsResponse:
            # Called from the download's worker thread while the loop awaits that thread.
            request = _urls_request(version.kind, pinned_ref(version), (path,))
            call = self._unary("GetDownloadUrls", request)
            return asyncio.run_coroutine_threadsafe(call, loop).result()

        # One thread owns the pull's writer from start to close. A cancelled caller tells it to
        # stop and waits for it to clean up (its staging folder removed), never racing it.
        stop = threading.Event()
        work = asyncio.ensure_future(
            asyncio.to_thread(direct_download.pull, dest, answer, refresh, stop=stop)
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()
            with contextlib.suppress(BaseException):
                await work
            raise

    async def _pull_streamed(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        writer = PullWriter(dest)
        request = _ref_request(registry_pb2.DownloadArtifactRequest, kind, ref)
        call = self._stub.DownloadArtifact(request, metadata=self._metadata)
        try:
            with domain_errors():
                async for message in call:
                    if message.WhichOneof("payload") == "version":
                        await asyncio.to_thread(writer.start, message.version)
                    else:
                        await asyncio.to_thread(writer.chunk, message.chunk)
            return await asyncio.to_thread(writer.finish)
        finally:
            call.cancel()
            await asyncio.to_thread(writer.close)

    async def read_file(self, kind: str, ref: str, path: str) -> bytes:
        reader = FileReader(path)
        call = self._stub.DownloadArtifact(_file_request(kind, ref, path), metadata=self._metadata)
        try:
            with domain_errors():
                async for message in call:
                    _feed(reader, message)
            return reader.finish()
        finally:
            call.cancel()

    async def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        request = _ref_request(registry_pb2.ResolveArtifactRequest, kind, ref)
        return (await self._unary("ResolveArtifact", request)).version

    async def get(self, kind: str, name: str) -> registry_pb2.Artifact:
        request = registry_pb2.GetArtifactRequest(kind=kind_value(kind), name=name)
        return (await self._unary("GetArtifact", request)).artifact

    async def list(
        self, kind: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> list[registry_pb2.Artifact]:
        out, token = [], ""
        while True:
            response = await self._unary("ListArtifacts", _list_request(kind, labels, token))
            out.extend(response.artifacts)
            token = response.next_page_token
            if not token:
                return out

    async def list_page(
        self,
        kind: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[builtins.list[registry_pb2.Artifact], str]:
        request = _list_request(kind, labels, page_token, page_size)
        response = await self._unary("ListArtifacts", request)
        return list(response.artifacts), response.next_page_token

    async def versions(self, kind: str, name: str) -> builtins.list[registry_pb2.ArtifactVersion]:
        request = registry_pb2.ListArtifactVersionsRequest(kind=kind_value(kind), name=name)
        return list((await self._unary("ListArtifactVersions", request)).versions)

    async def set_alias(
        self, kind: str, name: str, alias: str, version: int
    ) -> registry_pb2.Artifact:
        request = registry_pb2.SetAliasRequest(
            kind=kind_value(kind), name=name, alias=alias, version=version
        )
        return (await self._unary("SetAlias", request)).artifact

    async def delete_alias(self, kind: str, name: str, alias: str) -> None:
        request = registry_pb2.DeleteAliasRequest(kind=kind_value(kind), name=name, alias=alias)
        await self._unary("DeleteAlias", request)

    async def delete(self, kind: str, name: str, version: int = 0, force: bool = False) -> None:
        request = registry_pb2.DeleteArtifactRequest(
            kind=kind_value(kind), name=name, version=version, force=force
        )
        await self._unary("DeleteArtifact", request)

    async def lineage(self, kind: str, ref: str) -> builtins.list[registry_pb2.ArtifactVersion]:
        request = _ref_request(registry_pb2.GetLineageRequest, kind, ref)
        return list((await self._unary("GetLineage", request)).chain)

    async def promote(
        self,
        kind: str,
        name: str,
        alias: str,
        version: int,
        eval_set: str,
        graders_sha256: str = "",
        margin: float = 0.0,
    ) -> registry_pb2.PromoteAliasResponse:
        request = _promote_request(kind, name, alias, version, eval_set, graders_sha256, margin)
        return await self._unary("PromoteAlias", request)

    async def evaluations(
        self, model_kind: str, model: str, eval_set: str | None = None
    ) -> builtins.list[registry_pb2.ArtifactVersion]:
        wanted = kind_value(model_kind)
        found = []
        for artifact in await self.list("evaluation"):
            for v in await self.versions("evaluation", artifact.name):
                if _is_evaluation_of(v, wanted, model, eval_set):
                    found.append(v)
        return _newest_first(found)
