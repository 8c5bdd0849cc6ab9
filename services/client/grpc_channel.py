"""What every tuneplex gRPC client shares: a channel with our options, the API key as call
metadata, a default deadline, and gRPC errors turned back into the domain errors of
``services.common.errors`` so callers catch ``NotFound``, not status codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from services.common.auth import bearer_metadata
from services.common.errors import from_grpc_error
from services.common.grpc_server import channel_options


@contextmanager
def domain_errors() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        raise from_grpc_error(exc) from None


class BlockingClient:
    """Base of the blocking clients; ``target`` is ``host:port``. A context manager."""

    def __init__(self, stub_class, target: str, api_key: str | None, timeout: float | None):
        self._channel = grpc.insecure_channel(target, options=channel_options())
        self._stub = stub_class(self._channel)
        self._metadata = bearer_metadata(api_key)
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _unary(self, method: str, request):
        with domain_errors():
            return getattr(self._stub, method)(
                request, metadata=self._metadata, timeout=self.timeout
            )


class AsyncClient:
    """Base of the grpc.aio clients. An async context manager."""

    def __init__(self, stub_class, target: str, api_key: str | None, timeout: float | None):
        self._channel = grpc.aio.insecure_channel(target, options=channel_options())
        self._stub = stub_class(self._channel)
        self._metadata = bearer_metadata(api_key)
        self.timeout = timeout

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: str, request):
        with domain_errors():
            return await getattr(self._stub, method)(
                request, metadata=self._metadata, timeout=self.timeout
            )
