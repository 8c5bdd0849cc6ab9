"""The one error table of tuneplex.

Services raise domain errors (subclasses of ``TuneplexError``); the edges translate them once:
the gRPC interceptor to a status code, the HTTP gateway to a status and an OpenAI-shaped body.
The kind of an error, never its text, decides the code. ``INTERNAL`` / 500 is kept for bugs.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import grpc

# Errors echo what the user sent; a whole 15k-character name repeated back overflows gRPC's
# 8 KiB metadata limit (the status message is a header) and reads badly anywhere else.
SHOWN_CHARS = 100
MAX_MESSAGE_CHARS = 1000
MAX_FIELD_CHARS = 100


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr`` of a user's value for an error message, cut to ``limit`` characters with its
    length, so that echoing input can never make an error larger than the input's rule."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _capped(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... (truncated)"


@dataclass(frozen=True)
class ErrorMapping:
    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str


class TuneplexError(Exception):
    """Base of every error a user can cause or a dependency can raise.

    ``param`` names the field at fault (OpenAI's ``param``), ``code`` is a stable
    machine-readable reason such as ``model_not_found``.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        # Capped here, once, so neither edge (gRPC status, OpenAI body) can be flooded by a
        # message that embeds raw input; ``shown`` is the precise tool where input is echoed.
        message = _capped(message, MAX_MESSAGE_CHARS) or ""
        super().__init__(message)
        self.message = message
        self.param = _capped(param, MAX_FIELD_CHARS)
        self.code = _capped(code, MAX_FIELD_CHARS)

    @property
    def mapping(self) -> ErrorMapping:
        return mapping_for(type(self))

    def to_openai(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.mapping.openai_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidArgument(TuneplexError):
    """The request itself is wrong: a malformed field, a bad name, a bad file."""


class NotFound(TuneplexError):
    """The named thing does not exist."""


class AlreadyExists(TuneplexError):
    """A name or version that must be new is taken."""


class FailedPrecondition(TuneplexError):
    """The request is well formed but the system is not in a state to do it
    (an adapter for another base model, qlora without CUDA, a job that cannot fit)."""


class Aborted(TuneplexError):
    """A compare-and-set lost a race (an alias moved meanwhile); retrying may succeed."""


class ResourceExhausted(TuneplexError):
    """Too big or too many: an oversized upload, an overloaded engine."""


class Unauthenticated(TuneplexError):
    """Missing or wrong API key."""


class PermissionDenied(TuneplexError):
    """Authenticated but not allowed."""


class DataLoss(TuneplexError):
    """Stored bytes do not match their sha256: never served."""


class Unavailable(TuneplexError):
    """A dependency (vLLM engine, registry) is down; retrying later may work."""


class Cancelled(TuneplexError):
    """The operation was cancelled."""


class DeadlineExceeded(TuneplexError):
    """The operation took longer than allowed."""


class Internal(TuneplexError):
    """A bug. The message is logged in full and kept generic on the wire."""


ERROR_TABLE: dict[type[TuneplexError], ErrorMapping] = {
    InvalidArgument: ErrorMapping(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    NotFound: ErrorMapping(grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    AlreadyExists: ErrorMapping(grpc.StatusCode.ALREADY_EXISTS, 409, "invalid_request_error"),
    FailedPrecondition: ErrorMapping(
        grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"
    ),
    Aborted: ErrorMapping(grpc.StatusCode.ABORTED, 409, "conflict_error"),
    ResourceExhausted: ErrorMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    Unauthenticated: ErrorMapping(grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
    PermissionDenied: ErrorMapping(grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
    DataLoss: ErrorMapping(grpc.StatusCode.DATA_LOSS, 500, "server_error"),
    Unavailable: ErrorMapping(grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"),
    Cancelled: ErrorMapping(grpc.StatusCode.CANCELLED, 499, "cancelled_error"),
    DeadlineExceeded: ErrorMapping(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
    Internal: ErrorMapping(grpc.StatusCode.INTERNAL, 500, "server_error"),
}

_BY_GRPC_CODE: dict[grpc.StatusCode, type[TuneplexError]] = {
    m.grpc_code: cls for cls, m in ERROR_TABLE.items()
}


def mapping_for(cls: type[TuneplexError]) -> ErrorMapping:
    for klass in cls.__mro__:
        if klass in ERROR_TABLE:
            return ERROR_TABLE[klass]
    return ERROR_TABLE[Internal]


# Trailing metadata keys that carry a domain error's stable ``code`` and ``param`` over gRPC
# (the status code carries its kind, the details its message).
CODE_KEY = "tuneplex-error-code"
PARAM_KEY = "tuneplex-error-param"


def error_metadata(exc: TuneplexError) -> tuple[tuple[str, str], ...]:
    # gRPC metadata values must be printable ASCII; anything else would fail the abort itself.
    return tuple(
        (k, _ascii(v)) for k, v in ((CODE_KEY, exc.code), (PARAM_KEY, exc.param)) if v
    )


def _ascii(value: str) -> str:
    text = value.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text[:MAX_FIELD_CHARS]


def from_grpc_error(err: grpc.RpcError) -> TuneplexError:
    """Turn an error a tuneplex gRPC service returned back into its domain error, so a client
    (the gateway asking the registry, say) can re-raise it with the right kind, code and param."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    extra = {k: v for k, v in (trailing or ()) if k in (CODE_KEY, PARAM_KEY)}
    cls = _BY_GRPC_CODE.get(code)
    if cls is None:
        # UNKNOWN, ... : a transport problem rather than a verdict on the request.
        cls = Unavailable if code == grpc.StatusCode.UNKNOWN else Internal
    return cls(details or code.name, code=extra.get(CODE_KEY), param=extra.get(PARAM_KEY))


def http_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == 499 else "Error"
