"""The one error table (``services.common.errors``), checked against the standards it follows
rather than against a copy of itself: every domain error has a gRPC code, the HTTP status
Google's API design guide gives that code, and an OpenAI error type the openai SDK reads back;
kind, code and param survive a real gRPC call."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path

import grpc
import httpx2
import openai
import pytest

from services.common import errors
from services.common.errors import ERROR_TABLE, TuneplexError, from_grpc_error
from services.common.grpc_server import build_server

REPO = Path(__file__).resolve().parents[2]
Code = grpc.StatusCode

# google.rpc.Code -> HTTP status, the table of https://cloud.google.com/apis/design/errors
# (#handling_errors; also google/rpc/code.proto): the standard ours must agree with.
GOOGLE_HTTP_STATUS = {
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
}
# What the openai SDK raises for a status (its documented error classes).
OPENAI_SDK_ERROR = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    429: openai.RateLimitError,
}

DOMAIN_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, TuneplexError) and cls is not TuneplexError
]


def test_every_domain_error_has_an_entry_of_its_own():
    assert DOMAIN_ERRORS and set(DOMAIN_ERRORS) == set(ERROR_TABLE)


def test_domain_errors_are_declared_only_in_the_table_module():
    """A ``TuneplexError`` subclass elsewhere would have no row and answer as a bug (500)."""
    direct = re.compile(r"^class \w+\((errors\.)?TuneplexError\)", re.M)
    outside = [
        str(path.relative_to(REPO))
        for path in (REPO / "services").rglob("*.py")
        if path.name != "errors.py" and direct.search(path.read_text())
    ]
    assert not outside


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_http_status_is_the_one_google_gives_the_grpc_code(cls):
    mapping = ERROR_TABLE[cls]
    assert mapping.grpc_code in GOOGLE_HTTP_STATUS, "OK is not an error"
    assert mapping.http_status == GOOGLE_HTTP_STATUS[mapping.grpc_code]


def test_each_grpc_code_names_one_kind():
    """The client turns a status back into a class by its code, so no two kinds share one."""
    codes = [m.grpc_code for m in ERROR_TABLE.values()]
    assert len(codes) == len(set(codes))
    assert ERROR_TABLE[errors.Internal].grpc_code == Code.INTERNAL  # kept for bugs


def test_openai_types_are_snake_case_and_never_span_client_and_server_errors():
    side: dict[str, set[bool]] = {}
    for mapping in ERROR_TABLE.values():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*_error", mapping.openai_type), mapping
        side.setdefault(mapping.openai_type, set()).add(mapping.http_status >= 500)
    assert all(len(s) == 1 for s in side.values()), side


def test_subclass_inherits_its_parents_mapping():
    class AdapterNotFound(errors.NotFound):
        pass

    assert AdapterNotFound("x").mapping == ERROR_TABLE[errors.NotFound]


# --- at the HTTP edge: what the openai SDK makes of the gateway's answer -----------------------


def sdk_error(err: TuneplexError) -> openai.APIStatusError:
    """The exception the openai SDK raises for the gateway's answer to `err`."""
    from services.gateway.http_errors import error_response

    response = error_response(err)

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            response.status_code, content=response.body, headers=dict(response.headers)
        )

    client = openai.OpenAI(
        api_key="unused",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    with pytest.raises(openai.APIStatusError) as raised:
        client.models.list()
    return raised.value


@pytest.mark.parametrize(
    "cls", [c for c in DOMAIN_ERRORS if c is not errors.Internal], ids=lambda c: c.__name__
)
def test_the_openai_sdk_reads_kind_type_code_and_param(cls):
    err = cls("no adapter 'x'", param="model", code="model_not_found")
    got = sdk_error(err)
    assert got.status_code == err.mapping.http_status
    expected = OPENAI_SDK_ERROR.get(err.mapping.http_status)
    if expected is None and err.mapping.http_status >= 500:
        expected = openai.InternalServerError
    if expected is not None:
        assert isinstance(got, expected)
    assert (got.type, got.code, got.param) == (err.mapping.openai_type, "model_not_found", "model")
    assert got.body == err.to_openai()["error"]
    assert set(err.to_openai()) == {"error"}
    assert set(err.to_openai()["error"]) == {"message", "type", "param", "code"}


def test_a_bug_is_a_generic_500_on_the_wire():
    got = sdk_error(errors.Internal("KeyError at /srv/tuneplex/secret.py:12"))
    assert isinstance(got, openai.InternalServerError)
    assert got.type == "server_error" and "secret" not in str(got.body)


# --- over gRPC: a real server with the services' interceptor, a real client -------------------


async def _raise_over_grpc(err: BaseException) -> grpc.aio.AioRpcError:
    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise err

    def register(server: grpc.aio.Server) -> None:
        method = grpc.unary_unary_rpc_method_handler(handler)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.v1.Errors", {"Raise": method}),)
        )

    server, port, _ = await build_server(
        host="127.0.0.1", port=0, api_key=None, register=[register], service_names=[]
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.unary_unary("/test.v1.Errors/Raise")(b"", timeout=10)
            return raised.value
    finally:
        await server.stop(None)


def over_grpc(err: BaseException) -> TuneplexError:
    return from_grpc_error(asyncio.run(_raise_over_grpc(err)))


@pytest.mark.parametrize(
    "cls", [c for c in DOMAIN_ERRORS if c is not errors.Internal], ids=lambda c: c.__name__
)
def test_kind_message_code_and_param_survive_a_grpc_call(cls):
    back = over_grpc(cls("no adapter 'sql-lora'", code="adapter_not_found", param="name"))
    assert type(back) is cls
    assert (back.message, back.code, back.param) == (
        "no adapter 'sql-lora'",
        "adapter_not_found",
        "name",
    )


def test_an_error_without_code_or_param_comes_back_without_them():
    back = over_grpc(errors.NotFound("bare"))
    assert (type(back), back.code, back.param) == (errors.NotFound, None, None)


def test_a_bug_crosses_grpc_as_internal_without_its_text():
    back = over_grpc(KeyError("/srv/tuneplex/secret.py"))
    assert type(back) is errors.Internal and "secret" not in back.message


class _RpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def trailing_metadata(self):
        return ()

    def code(self):
        return self._code

    def details(self):
        return ""


def test_transport_failure_is_unavailable():
    assert isinstance(from_grpc_error(_RpcError(grpc.StatusCode.UNKNOWN)), errors.Unavailable)


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
