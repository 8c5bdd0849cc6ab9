"""GatewayAdmin: the gateway's promotion routes (`/tuneplex/v1/warm`, `/tuneplex/v1/refresh`)
for the CLI and the promotion flow, blocking (httpx).

The gateway answers errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`;
they come back here as the domain errors of ``services.common.errors`` (a 404 is ``NotFound``,
a 400 ``InvalidArgument``), so callers handle the gateway like the registry. Messages name the
URL the user gave and nothing behind it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from services.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TuneplexError,
    Unauthenticated,
    Unavailable,
)

WARM_PATH = "/tuneplex/v1/warm"
REFRESH_PATH = "/tuneplex/v1/refresh"

# HTTP status -> domain error. 400 covers both InvalidArgument and FailedPrecondition on the
# gateway's side (OpenAI has one invalid_request_error); the caller's fix is in the message.
_BY_STATUS: dict[int, type[TuneplexError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: AlreadyExists,
    422: InvalidArgument,
    429: ResourceExhausted,
    500: Internal,
    502: Unavailable,
    503: Unavailable,
    504: DeadlineExceeded,
}


def _base_url(url: str) -> str:
    # Accept the openai SDK's base_url (`http://host:8000/v1`) as well as the gateway's root.
    url = url.rstrip("/")
    return url.removesuffix("/v1")


class GatewayAdmin:
    """``url`` is the gateway's address (`http://127.0.0.1:8000`); ``api_key`` its bearer key.
    A context manager; ``close()`` otherwise. ``timeout``: a warm pulls and loads adapters."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0):
        self.url = _base_url(url)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers,
                                  timeout=httpx.Timeout(timeout, connect=10.0))

    def __enter__(self) -> GatewayAdmin:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def warm(self, model: str, replaces: str) -> dict[str, Any]:
        """Load the pinned adapter version ``model`` (`sql-lora@4`) into every ready engine
        that holds what ``replaces`` (`sql-lora@prod`) names now, before the alias moves.
        -> ``{"model", "loaded_on", "already_on", "seconds", "message"}``."""
        return self._post(WARM_PATH, {"model": model, "replaces": replaces})

    def refresh(self, model: str) -> dict[str, Any]:
        """Make the gateway forget what it cached for every ref of ``model``'s adapter name
        and resolve ``model`` again. -> ``{"model", "version"}`` (`version`: `name@N`)."""
        return self._post(REFRESH_PATH, {"model": model})

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._http.post(path, json=body)
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"gateway at {self.url} did not answer in time") from None
        except httpx.TransportError:
            raise Unavailable(f"gateway at {self.url} is not reachable") from None
        if resp.status_code >= 400:
            raise _error_of(resp, self.url)
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise Unavailable(f"gateway at {self.url} answered {path} with something other than "
                              "a JSON object: is that URL a tuneplex gateway?")
        return answer


def _error_of(resp: httpx.Response, url: str) -> TuneplexError:
    kind = _BY_STATUS.get(resp.status_code)
    if kind is None:
        kind = Unavailable if resp.status_code >= 500 else InvalidArgument
    try:
        error = resp.json()["error"]
        message = str(error["message"])
        param, code = error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError):
        # Not the gateway's error shape: a proxy in between, or not a tuneplex gateway at all.
        if resp.status_code == 404:
            return NotFound(f"gateway at {url} has no route {resp.request.url.path}: is it a "
                            "tuneplex gateway of this version?")
        message, param, code = f"gateway at {url} answered HTTP {resp.status_code}", None, None
    if kind is Internal:
        message = f"gateway at {url} failed: {message}"
    return kind(message, param=param if isinstance(param, str) else None,
                code=code if isinstance(code, str) else None)
