"""Choosing an engine for a request: adapter affinity first, then the least loaded."""

from __future__ import annotations

from services.common.errors import Unavailable
from services.gateway.engines import Engine, EngineState


def pick_engine(engines: list[Engine], lora_id: str | None, base_name: str) -> Engine:
    ready = [e for e in engines if e.state == EngineState.READY]
    if not ready:
        states = ", ".join(f"{e.id} {e.state.value}" for e in engines) or "none configured"
        raise Unavailable(f"no engine ready for {base_name} ({states}); retry shortly")
    least = min(ready, key=lambda e: e.load)
    if lora_id is None:
        return least
    warm = [e for e in ready if lora_id in e.adapters]
    if not warm:
        return least
    best_warm = min(warm, key=lambda e: e.load)
    # Affinity saves a load, but not at the price of queueing on a busy engine while another
    # one has nothing waiting.
    if best_warm.waiting and not least.waiting:
        return least
    return best_warm
