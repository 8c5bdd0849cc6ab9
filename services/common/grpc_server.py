"""A thin ``grpc.aio`` server in the LoRAX style: the servicer is injected, interceptors do
auth, error mapping and metrics, health (``grpc.health.v1``) and reflection are on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from services.common.auth import check_bearer
from services.common.errors import Internal, TuneplexError, error_metadata

log = logging.getLogger(__name__)

# Large enough for 4 MiB upload chunks with headroom; bigger artifacts are streamed.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

GRPC_REQUESTS = Counter(
    "grpc_server_handled_total", "RPCs completed, by method and status code.", ["method", "code"]
)
GRPC_LATENCY = Histogram(
    "grpc_server_handling_seconds", "Time to complete an RPC, by method.", ["method"]
)

# Probes and reflection must work without a key: kubelet does not carry one.
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# The status message travels as the `grpc-message` header, percent-encoded (up to 3 bytes per
# UTF-8 byte), and a client refuses headers over 8 KiB in all (gRPC's default
# max_metadata_size): keep the message well below, whatever its characters.
MAX_STATUS_MESSAGE_BYTES = 2048


def status_message(text: str, budget: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """``text`` cut so that its percent-encoded form fits ``budget`` bytes."""
    marker = "... (truncated)"
    costs = [_encoded_size(c) for c in text]
    if sum(costs) <= budget:
        return text
    used, room = 0, budget - len(marker)
    for i, cost in enumerate(costs):
        if used + cost > room:
            return text[:i] + marker
        used += cost
    return text


def _encoded_size(char: str) -> int:
    if " " <= char <= "~" and char != "%":
        return 1
    return 3 * len(char.encode("utf-8", "replace"))


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, TuneplexError) and not isinstance(exc, Internal):
        await context.abort(
            exc.mapping.grpc_code, status_message(exc.message), error_metadata(exc)
        )
    log.exception("bug in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see server log")


def _code_of(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Checks the API key, maps domain errors to status codes, records metrics."""

    def __init__(self, api_key: str | None):
        self._api_key = api_key

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        api_key = None if method.startswith(_OPEN_METHODS) else self._api_key

        def authorize(context: grpc.aio.ServicerContext) -> None:
            metadata = dict(context.invocation_metadata() or ())
            check_bearer(metadata.get("authorization"), api_key)

        behavior: Callable[..., Any]  # a coroutine function or an async generator function
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request_or_iterator, context):
                start = time.perf_counter()
                try:
                    authorize(context)
                    return await inner(request_or_iterator, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise  # an abort already sent, or the client went away: not a bug
                except BaseException as exc:  # noqa: BLE001 - mapped, never swallowed
                    await _abort(context, exc, method)
                finally:
                    GRPC_LATENCY.labels(method).observe(time.perf_counter() - start)
                    GRPC_REQUESTS.labels(method, _code_of(context)).inc()

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            behavior = unary_response
        else:
            inner = handler.unary_stream or handler.stream_stream

            async def stream_response(request_or_iterator, context):
                start = time.perf_counter()
                try:
                    authorize(context)
                    async for item in inner(request_or_iterator, context):
                        yield item
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise  # an abort already sent, or the client went away: not a bug
                except BaseException as exc:  # noqa: BLE001
                    await _abort(context, exc, method)
                finally:
                    GRPC_LATENCY.labels(method).observe(time.perf_counter() - start)
                    GRPC_REQUESTS.labels(method, _code_of(context)).inc()

            factory = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler
            )
            behavior = stream_response
        return factory(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def server_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def channel_options() -> list[tuple[str, Any]]:
    return server_options()


async def build_server(
    *,
    host: str,
    port: int,
    api_key: str | None,
    register: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Iterable[str],
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Create and start a server. Returns it with the port actually bound (for ``port=0``)
    and its health servicer, already SERVING for every name in ``service_names``."""
    server = grpc.aio.server(interceptors=[ServiceInterceptor(api_key)], options=server_options())
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer
