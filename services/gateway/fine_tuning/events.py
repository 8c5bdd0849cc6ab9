"""A job's events as OpenAI's `fine_tuning.job.event` objects: newest first, paged by
`after` (an event id: the page holds the events older than it) and `limit`.

The trainer streams a job's events (the recorded ones, then live ones until the job ends). A
page needs only those recorded so far: for a job still going, the stream is read until it has
been quiet for a moment, then closed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from services.common.errors import InvalidArgument, TuneplexError, shown
from services.common.stubs import trainer_pb2
from services.gateway.fine_tuning import names
from services.gateway.fine_tuning.protocol import JobEvent, JobEventList
from services.gateway.fine_tuning.status import status_of

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
# The recorded events come back in one burst; a gap this long means they are all here.
QUIET_S = 0.3


def event_object(trainer_job: str, event: trainer_pb2.JobEvent) -> JobEvent:
    kind = event.WhichOneof("kind")
    level = "info"
    data: dict[str, Any] | None = None
    type_ = "message"
    if kind == "state_changed":
        status = status_of(event.state_changed.state)
        message = f"Job {status}" + (
            f": {event.state_changed.message}" if event.state_changed.message else ""
        )
        level = "error" if status == "failed" else "info"
    elif kind == "progress":
        p = event.progress
        type_ = "metrics"
        data = {
            "step": p.step,
            "total_steps": p.total_steps,
            "train_loss": p.loss,
            "learning_rate": p.learning_rate,
            "trained_tokens": p.trained_tokens,
        }
        message = f"Step {p.step}/{p.total_steps}: training loss={p.loss:.4f}"
    elif kind == "eval":
        type_ = "metrics"
        data = {"step": event.eval.step, **dict(event.eval.metrics)}
        shown_metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(event.eval.metrics.items()))
        message = f"Step {event.eval.step}: {shown_metrics}"
    elif kind == "checkpoint_saved":
        message = f"Checkpoint saved at step {event.checkpoint_saved.step}"
    else:
        message = event.log.message
        if message.lower().startswith(("warning", "warn")):
            level = "warn"
    return JobEvent(
        id=names.event_id(trainer_job, event.sequence),
        created_at=event.time.seconds,
        level=level,
        message=message,
        type=type_,
        data=data,
    )


def page(
    trainer_job: str, events: Iterable[trainer_pb2.JobEvent], *, after: str | None, limit: int
) -> JobEventList:
    """Newest first; with `after`, only the events older than that one."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be from 1 to {MAX_LIMIT}", param="limit")
    ordered = sorted(events, key=lambda e: e.sequence, reverse=True)
    if after:
        before = names.event_sequence(after)
        if before is None:
            raise InvalidArgument(f"after {shown(after)} is not an event id", param="after")
        ordered = [e for e in ordered if e.sequence < before]
    chosen = ordered[:limit]
    return JobEventList(
        data=[event_object(trainer_job, e) for e in chosen], has_more=len(ordered) > limit
    )


def recorded(
    stream: Callable[[], Iterator[trainer_pb2.JobEvent]],
    close: Callable[[], None],
    *,
    quiet_s: float = QUIET_S,
) -> list[trainer_pb2.JobEvent]:
    """The events `stream` yields until it ends or goes quiet for `quiet_s`; then `close`
    (which must end the stream: closing its channel) is called. Blocking: run it in a thread."""
    arrived: queue.Queue[Any] = queue.Queue()
    done = object()

    def pump() -> None:
        try:
            for event in stream():
                arrived.put(event)
        except TuneplexError as exc:
            arrived.put(exc)
        finally:
            arrived.put(done)

    threading.Thread(target=pump, daemon=True, name="job-events").start()
    events: list[trainer_pb2.JobEvent] = []
    try:
        while True:
            try:
                item = arrived.get(timeout=quiet_s)
            except queue.Empty:
                return events
            if item is done:
                return events
            if isinstance(item, TuneplexError):
                if events:  # closed under it after a burst: what came is the answer
                    return events
                raise item
            events.append(item)
    finally:
        close()
