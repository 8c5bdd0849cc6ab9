"""Admission by expected wait: whether a request may queue for an engine, or gets 429 now.

A queue bounded by length alone lets a CPU engine hold requests for a minute: 50 adapter chats
behind 256 slots waited 48 s (p50), so a client with a 30 s timeout lost all of them. What a
client can act on is time, so the engine's line is bounded by the expected wait: how long a
request arriving now would wait for a slot, given how long requests have held one lately. Past
the limit it is answered at once with 429 and a `retry-after` of when the wait will be back
under the limit, which the openai SDK honours.

Pure logic with the clock passed in; the engine (engines.py) owns the counts and start times.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.errors import ResourceExhausted

# Weight of the newest duration: about the last ten requests make the estimate, so it follows
# a change of load (longer answers, more adapters) within seconds without jumping on one outlier.
_EWMA_ALPHA = 0.2


class EngineBusy(ResourceExhausted):
    """429: the engine's line is longer than the configured wait. Says when to come back."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, code="engine_overloaded")
        self.retry_after_s = retry_after_s


@dataclass
class ServiceTime:
    """How long one request holds an engine slot (to its last byte, streams included), as an
    exponentially weighted mean. None until the first request has finished."""

    seconds: float | None = None
    alpha: float = _EWMA_ALPHA

    def observe(self, duration_s: float) -> None:
        duration_s = max(duration_s, 0.0)
        if self.seconds is None:
            self.seconds = duration_s
        else:
            self.seconds += self.alpha * (duration_s - self.seconds)


def expected_wait(remaining_s: Iterable[float], waiting: int, slots: int,
                  service_s: float) -> float:
    """Seconds until a request arriving now gets one of `slots`: the requests in flight free
    theirs after `remaining_s`, and each of the `waiting` ahead of it then holds the earliest
    free slot for `service_s`. Exact for equal service times, whether the ones in flight
    started together (a burst: the next slot frees only when the whole batch ends) or spread
    out (a slot frees every service_s / slots)."""
    frees = sorted(max(r, 0.0) for r in remaining_s)[:slots]
    frees += [0.0] * (slots - len(frees))
    heapq.heapify(frees)
    for _ in range(waiting):
        heapq.heapreplace(frees, frees[0] + service_s)
    return frees[0]


@dataclass(frozen=True)
class Decision:
    admit: bool
    wait_s: float  # expected wait for a slot; 0 when one is free or nothing is known yet
    retry_after_s: int = 0  # when refused: seconds until the wait is back under the limit


class AdmissionPolicy:
    """Admit while the expected wait is at most `max_wait_s` (None: no time limit) and fewer
    than `max_queue` wait; refuse with a retry-after otherwise."""

    def __init__(self, slots: int, max_queue: int, max_wait_s: float | None):
        self.slots = slots
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s

    def decide(self, started: Iterable[float], waiting: int, now: float,
               service: ServiceTime) -> Decision:
        """`started`: when each request in flight took its slot (the clock of `now`)."""
        started = list(started)
        wait = 0.0
        if service.seconds is not None and (len(started) >= self.slots or waiting):
            remaining = [service.seconds - (now - t) for t in started]
            wait = expected_wait(remaining, waiting, self.slots, service.seconds)
        if len(started) >= self.slots and waiting >= self.max_queue:
            return Decision(False, wait, self._retry_after(wait, service))
        if self.max_wait_s is not None and wait > self.max_wait_s:
            return Decision(False, wait, self._retry_after(wait, service))
        return Decision(True, wait)

    def _retry_after(self, wait: float, service: ServiceTime) -> int:
        """With no newcomers the line drains in real time, so the wait is under the limit
        again after `wait - limit`; a full queue with no limit clears a slot per service time
        / slots. At least 1 s, as an HTTP Retry-After is whole seconds."""
        if self.max_wait_s is not None and wait > self.max_wait_s:
            return max(1, math.ceil(wait - self.max_wait_s))
        per_slot = (service.seconds or 0.0) / self.slots
        return max(1, math.ceil(per_slot))

    def refusal(self, decision: Decision) -> EngineBusy:
        """The error a refused request gets: our words, no engine names or numbers of slots."""
        if self.max_wait_s is not None and decision.wait_s > self.max_wait_s:
            why = (f"a new request would wait about {decision.wait_s:.0f} s for the model "
                   f"(the limit is {self.max_wait_s:g} s)")
        else:
            why = "too many requests are waiting for the model"
        return EngineBusy(f"The model is busy: {why}. Retry after "
                          f"{decision.retry_after_s} s.", decision.retry_after_s)
