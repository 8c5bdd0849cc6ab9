"""API-key authentication: ``Authorization: Bearer <key>`` over HTTP, the ``authorization``
metadata key over gRPC. With no key configured (only allowed on loopback) everyone is let in."""

from __future__ import annotations

import hmac

from services.common.errors import Unauthenticated

BEARER = "bearer "


def check_bearer(header_value: str | None, api_key: str | None) -> None:
    """Raise ``Unauthenticated`` unless ``header_value`` is ``Bearer <api_key>``."""
    if api_key is None:
        return
    if not header_value:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    if not header_value.lower().startswith(BEARER):
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
    given = header_value[len(BEARER) :].strip()
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise Unauthenticated("invalid API key")


def bearer_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying ``api_key``, empty when there is none."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()
