"""The one error table: each domain error maps to its gRPC code, HTTP status and OpenAI type."""

import grpc
import pytest

from services.common import errors
from services.common.errors import ERROR_TABLE, from_grpc_error

EXPECTED = {
    errors.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    errors.AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, 409, "invalid_request_error"),
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"),
    errors.Aborted: (grpc.StatusCode.ABORTED, 409, "conflict_error"),
    errors.ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    errors.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
    errors.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
    errors.DataLoss: (grpc.StatusCode.DATA_LOSS, 500, "server_error"),
    errors.Unavailable: (grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"),
    errors.Cancelled: (grpc.StatusCode.CANCELLED, 499, "cancelled_error"),
    errors.DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
    errors.Internal: (grpc.StatusCode.INTERNAL, 500, "server_error"),
}


def test_table_covers_every_domain_error():
    assert set(ERROR_TABLE) == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED))
def test_mapping(cls):
    grpc_code, http_status, openai_type = EXPECTED[cls]
    exc = cls("boom", param="model", code="x")
    assert exc.mapping.grpc_code == grpc_code
    assert exc.mapping.http_status == http_status
    body = exc.to_openai()
    assert body == {
        "error": {"message": "boom", "type": openai_type, "param": "model", "code": "x"}
    }


def test_subclass_inherits_its_parents_mapping():
    class AdapterNotFound(errors.NotFound):
        pass

    assert AdapterNotFound("x").mapping.http_status == 404


class _RpcError(grpc.RpcError):
    def __init__(self, code, details, trailing=()):
        self._code, self._details, self._trailing = code, details, trailing

    def trailing_metadata(self):
        return self._trailing

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("cls", [c for c in EXPECTED if c is not errors.Internal])
def test_round_trip_through_grpc_status(cls):
    back = from_grpc_error(_RpcError(EXPECTED[cls][0], "why"))
    assert type(back) is cls
    assert back.message == "why"


def test_transport_failure_is_unavailable():
    assert isinstance(from_grpc_error(_RpcError(grpc.StatusCode.UNKNOWN, "")), errors.Unavailable)


def test_code_and_param_round_trip_through_trailing_metadata():
    sent = errors.NotFound("no adapter 'x'", code="adapter_not_found", param="name")
    back = from_grpc_error(
        _RpcError(grpc.StatusCode.NOT_FOUND, sent.message, errors.error_metadata(sent))
    )
    assert (type(back), back.code, back.param) == (errors.NotFound, "adapter_not_found", "name")
    assert errors.error_metadata(errors.NotFound("bare")) == ()


# --- echoed input never floods an error ------------------------------------------------------


def test_shown_truncates_with_the_length():
    assert errors.shown("sql-lora") == "'sql-lora'"
    long = errors.shown("x" * 15_000)
    assert long.startswith("'" + "x" * 100 + "'...") and long.endswith("(15000 characters)")
    assert len(long) < 140
    assert len(errors.shown(["x"] * 1000)) < 140


def test_message_param_and_code_are_capped():
    exc = errors.InvalidArgument("bad " + "y" * 50_000, param="p" * 5000, code="c" * 5000)
    assert len(exc.message) <= errors.MAX_MESSAGE_CHARS + 20
    assert exc.message.endswith("(truncated)") and str(exc) == exc.message
    assert len(exc.param) <= errors.MAX_FIELD_CHARS + 20
    assert len(exc.to_openai()["error"]["message"]) < errors.MAX_MESSAGE_CHARS + 20


def test_error_metadata_is_short_printable_ascii():
    exc = errors.InvalidArgument("x", param="lineage.dataset\u00e9" + "z" * 500, code="c\n1")
    for _, value in errors.error_metadata(exc):
        assert len(value) <= errors.MAX_FIELD_CHARS
        assert all(" " <= c <= "~" for c in value)


@pytest.mark.parametrize("text", ["a" * 10_000, "é" * 5000, "%" * 5000, "\U0001f600" * 3000])
def test_grpc_status_message_fits_the_header_budget(text):
    from services.common.grpc_server import MAX_STATUS_MESSAGE_BYTES, status_message

    cut = status_message(text)
    encoded = sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode()) for c in cut)
    assert encoded <= MAX_STATUS_MESSAGE_BYTES
    assert cut.endswith("(truncated)") and text.startswith(cut[:50])
    assert status_message("short é") == "short é"
