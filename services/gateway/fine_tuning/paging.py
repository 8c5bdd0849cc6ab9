"""OpenAI's `after` cursor over a list already in its order: the items that follow the one whose
id is `after` (none when no item has that id, as OpenAI answers a cursor it does not know)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def after_cursor(items: Sequence[T], after: str | None, id_of: Callable[[T], str]) -> list[T]:
    if not after:
        return list(items)
    ids = [id_of(item) for item in items]
    return list(items[ids.index(after) + 1 :]) if after in ids else []
