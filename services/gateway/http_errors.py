"""The gateway's error answers: one OpenAI-shaped body whose status comes from the error table,
never from the text, and the headers that tell a client whether and when to retry.

Every 429 and 503 carries `x-should-retry: true` and a `Retry-After` in whole seconds, which the
openai SDK honours (up to 60 s) instead of its own backoff. A bug is a generic 500 on the wire
and the details in the log, and it never costs the client its keep-alive connection.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import (
    ERROR_TABLE,
    Internal,
    ResourceExhausted,
    TuneplexError,
    Unavailable,
)

log = logging.getLogger(__name__)

# When nothing more precise is known: an overloaded engine frees a slot within about a second;
# an engine restarting or a registry blip takes a few.
_DEFAULT_RETRY_AFTER_S = {ResourceExhausted: 1, Unavailable: 5}


def retry_after_s(err: TuneplexError) -> int | None:
    """Seconds a client should wait before retrying `err`; None when retrying will not help."""
    for kind, default in _DEFAULT_RETRY_AFTER_S.items():
        if isinstance(err, kind):
            seconds = getattr(err, "retry_after_s", None)
            return max(1, int(seconds)) if seconds else default
    return None


def retry_headers(err: TuneplexError) -> dict[str, str] | None:
    seconds = retry_after_s(err)
    if seconds is None:
        return None
    return {"x-should-retry": "true", "retry-after": str(seconds)}


def error_response(err: TuneplexError) -> JSONResponse:
    if isinstance(err, Internal) or err.mapping is ERROR_TABLE[Internal]:
        log.error("internal error: %s", err.message)
        err = Internal("internal error")
    return JSONResponse(err.to_openai(), status_code=err.mapping.http_status,
                        headers=retry_headers(err))


class InternalErrorGuard:
    """ASGI middleware (`app.add_middleware`, so inside Starlette's ServerErrorMiddleware): an
    exception no handler took becomes the generic 500 body here.

    Starlette's own last resort answers 500 and then re-raises, which makes the server drop the
    connection: one bad request would cost a keep-alive client its connection. Once the
    response has started nothing can be sent but the end of the body."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def note_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, note_start)
        except Exception:  # noqa: BLE001 - the last resort: log it, answer, keep the connection
            log.exception("unhandled error")
            if started:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            response = error_response(Internal("internal error"))
            await response(scope, receive, send)
