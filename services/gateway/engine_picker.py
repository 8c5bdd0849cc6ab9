"""Choosing an engine for a request: adapter affinity first, then the least loaded."""

from __future__ import annotations

from collections.abc import Collection

from services.common.errors import Unavailable
from services.gateway.engines import Engine, EngineState


def pick_engine(engines: list[Engine], base_name: str, warm: Collection[str] = ()) -> Engine:
    """Among `engines` (those serving `base_name`), the ready one to send a request to. `warm`
    holds the ids of the engines that already have the request's adapter registered."""
    ready = [e for e in engines if e.state == EngineState.READY]
    if not ready:
        # Which engines and where stay in the log and /health; the user learns if it is coming.
        starting = any(e.state == EngineState.STARTING for e in engines)
        raise Unavailable(f"the model {base_name} is {'starting' if starting else 'unavailable'}"
                          "; retry shortly", code="model_starting" if starting else None)
    least = min(ready, key=lambda e: e.load)
    with_adapter = [e for e in ready if e.id in warm]
    if not with_adapter:
        return least
    best_warm = min(with_adapter, key=lambda e: e.load)
    # Affinity saves a load, but not at the price of queueing on a busy engine while another
    # one has nothing waiting.
    if best_warm.waiting and not least.waiting:
        return least
    return best_warm
