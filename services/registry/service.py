"""The gRPC face of the registry: requests in, ``ArtifactRegistry`` calls, messages out.

Domain errors raised here or below become status codes in the common interceptor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from services.common.errors import InvalidArgument
from services.common.labels import check_labels
from services.common.stubs import registry_pb2, registry_pb2_grpc
from services.registry import convert
from services.registry.artifacts import ArtifactRegistry
from services.registry.names import Ref, check_name, kind_name

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
MAX_PAGE_SIZE = 1000


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: ArtifactRegistry):
        self.registry = registry
        self.metadata = registry.metadata

    async def UploadArtifact(self, request_iterator, context: grpc.aio.ServicerContext):
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument("an upload starts with its header", param="header")
        row = await self.registry.upload(first.header, _chunks(requests))
        return registry_pb2.UploadArtifactResponse(version=convert.version_to_proto(row))

    async def DownloadArtifact(self, request, context: grpc.aio.ServicerContext):
        row = await self.registry.resolve(request.kind, request.ref)
        files = self.registry.files_to_send(row, request.paths)
        yield registry_pb2.DownloadArtifactResponse(version=convert.version_to_proto(row))
        for entry in files:
            async for data in self.registry.file_chunks(entry):
                # Filled in place: a nested constructor would copy the bytes twice.
                message = registry_pb2.DownloadArtifactResponse()
                message.chunk.path = entry.path
                message.chunk.data = data
                yield message

    async def GetDownloadUrls(self, request, context: grpc.aio.ServicerContext):
        row = await self.registry.resolve(request.kind, request.ref)
        files = self.registry.files_to_send(row, request.paths)
        response = registry_pb2.GetDownloadUrlsResponse(version=convert.version_to_proto(row))
        if self.registry.direct.enabled:
            response.direct_transfers = True
            for signed in await asyncio.to_thread(self.registry.direct.urls, files):
                url = response.urls.add(path=signed.path, url=signed.url)
                url.expire_time.FromDatetime(signed.expire_time)
        return response

    async def ResolveArtifact(self, request, context):
        row = await self.registry.resolve(request.kind, request.ref)
        return registry_pb2.ResolveArtifactResponse(version=convert.version_to_proto(row))

    async def GetArtifact(self, request, context):
        kind = kind_name(request.kind)
        check_name(request.name)
        return registry_pb2.GetArtifactResponse(artifact=await self._artifact(kind, request.name))

    async def ListArtifacts(self, request, context):
        kind = kind_name(request.kind) if request.kind else None
        size = request.page_size if 0 < request.page_size <= MAX_PAGE_SIZE else MAX_PAGE_SIZE
        after = None
        if request.page_token:
            token_kind, sep, token_name = request.page_token.partition("/")
            if not sep:
                raise InvalidArgument("malformed page_token", param="page_token")
            after = (token_kind, token_name)
        labels = check_labels(request.labels)
        rows = await asyncio.to_thread(self.metadata.list_artifacts, kind, after, size + 1, labels)
        page = rows[:size]
        artifacts = []
        for row in page:
            latest = await asyncio.to_thread(self.metadata.resolve, row.kind, Ref(row.name))
            artifacts.append(convert.artifact_to_proto(row, latest))
        token = f"{page[-1].kind}/{page[-1].name}" if len(rows) > size else ""
        return registry_pb2.ListArtifactsResponse(artifacts=artifacts, next_page_token=token)

    async def ListArtifactVersions(self, request, context):
        kind = kind_name(request.kind)
        check_name(request.name)
        rows = await asyncio.to_thread(self.metadata.list_versions, kind, request.name)
        return registry_pb2.ListArtifactVersionsResponse(
            versions=[convert.version_to_proto(r) for r in rows]
        )

    async def DeleteArtifact(self, request, context):
        await self.registry.delete(request.kind, request.name, request.version, request.force)
        return registry_pb2.DeleteArtifactResponse()

    async def SetAlias(self, request, context):
        await self.registry.set_alias(request.kind, request.name, request.alias, request.version)
        artifact = await self._artifact(kind_name(request.kind), request.name)
        return registry_pb2.SetAliasResponse(artifact=artifact)

    async def DeleteAlias(self, request, context):
        await self.registry.delete_alias(request.kind, request.name, request.alias)
        return registry_pb2.DeleteAliasResponse()

    async def GetLineage(self, request, context):
        chain = await self.registry.lineage(request.kind, request.ref)
        return registry_pb2.GetLineageResponse(chain=[convert.version_to_proto(r) for r in chain])

    async def PromoteAlias(self, request, context):
        done = await self.registry.promote(request)
        latest = await asyncio.to_thread(
            self.metadata.resolve, done.artifact.kind, Ref(done.artifact.name)
        )
        response = registry_pb2.PromoteAliasResponse(
            artifact=convert.artifact_to_proto(done.artifact, latest),
            previous_version=done.previous_version,
        )
        if done.candidate_evaluation is not None:
            response.candidate_evaluation.CopyFrom(
                convert.version_to_proto(done.candidate_evaluation)
            )
        if done.holder_evaluation is not None:
            response.holder_evaluation.CopyFrom(convert.version_to_proto(done.holder_evaluation))
        return response

    async def _artifact(self, kind: str, name: str) -> registry_pb2.Artifact:
        row = await asyncio.to_thread(self.metadata.get_artifact, kind, name)
        latest = await asyncio.to_thread(self.metadata.resolve, kind, Ref(name))
        return convert.artifact_to_proto(row, latest)


async def _chunks(request_iterator) -> AsyncIterator[registry_pb2.FileChunk]:
    async for request in request_iterator:
        if request.WhichOneof("payload") != "chunk":
            raise InvalidArgument("only file chunks may follow the header", param="chunk")
        yield request.chunk


def add_to_server(servicer: RegistryServicer):
    return lambda server: registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
