"""The registry and the trainer as the fine-tuning routes may see them fail: an outage is a 503
with `retry-after` in our words (the gRPC target and transport details go to the log only);
errors about the request pass through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from services.gateway.registry_guard import REGISTRY_DOWN

log = logging.getLogger(__name__)

T = TypeVar("T")
TRAINER_DOWN = "the trainer is unavailable; retry shortly"
# The gateway's own credentials were refused: the operator's problem, never the caller's key
# (a 401 here would tell the SDK that the user's key is wrong).
REFUSED = (
    "the gateway could not authenticate to the {service}; its operator must check "
    "TUNEPLEX_GATEWAY_{setting}_API_KEY"
)
NO_TRAINER = (
    "fine-tuning is not enabled on this gateway: it has no trainer to run jobs "
    "(its operator sets TUNEPLEX_GATEWAY_TRAINER_TARGET)"
)


_OUTAGE = (Unavailable, DeadlineExceeded, Internal)
_REFUSAL = (Unauthenticated, PermissionDenied)


def _in_our_words(
    exc: Exception, call: str, *, service: str, setting: str, down: str, code: str
) -> Unavailable:
    """An upstream failure as a 503 a user can act on (retry); the details go to the log."""
    if isinstance(exc, _REFUSAL):
        log.error("the %s refused the gateway's key (%s): %s", service, call, exc)
        return Unavailable(REFUSED.format(service=service, setting=setting), code=code)
    log.warning("%s %s failed: %s", service, call, exc)
    return Unavailable(down, code=code)


@contextlib.contextmanager
def registry_outage(call: str) -> Iterator[None]:
    try:
        yield
    except (*_OUTAGE, *_REFUSAL) as exc:
        raise _in_our_words(exc, call, service="model registry", setting="REGISTRY",
                            down=REGISTRY_DOWN, code="registry_unavailable") from None


class TrainerAccess:
    """The blocking trainer SDK (`services.client.trainer.TrainerClient`) run off the event
    loop. `connect` makes a client (None: this gateway has no trainer)."""

    def __init__(self, connect: Callable[[], Any] | None):
        self._connect = connect
        self._client: Any | None = None

    @property
    def client(self) -> Any:
        if self._connect is None:
            raise FailedPrecondition(NO_TRAINER, code="fine_tuning_disabled")
        if self._client is None:
            self._client = self._connect()
        return self._client

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        function: Callable[..., Any] = getattr(self.client, method)
        return await self._guarded(method, function, *args, **kwargs)

    async def recorded_events(self, job_id: str, *, final: bool) -> list[Any]:
        """The events the trainer has recorded for `job_id`. The stream of a job still going
        never ends by itself: it is read on a client of its own, closed once it goes quiet."""
        from services.gateway.fine_tuning.events import recorded

        if final:
            client = self.client
            return await self._guarded(
                "events", recorded, lambda: client.stream_events(job_id), lambda: None
            )
        own = self._connect() if self._connect is not None else self.client
        return await self._guarded("events", recorded, lambda: own.stream_events(job_id), own.close)

    async def _guarded(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (*_OUTAGE, *_REFUSAL) as exc:
            raise _in_our_words(exc, what, service="trainer", setting="TRAINER",
                                down=TRAINER_DOWN, code="trainer_unavailable") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
