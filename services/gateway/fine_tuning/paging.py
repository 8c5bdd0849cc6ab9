"""OpenAI's `after` cursor over a list already in its order: the items that follow the one whose
id is `after` (none when no item has that id, as OpenAI answers a cursor it does not know)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def after_cursor(items: Sequence[T], after: str | None, id_of: Callable[[T], str]) -> list[T]:
    if not after:
        return list(items)
    ids = [id_of(item) for item in items]
    return list(items[ids.index(after) + 1 :]) if after in ids else []


def page_fields(page: Sequence[Any], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor fields of a list page: `first_id`, `last_id`, `has_more`."""
    return {
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": has_more,
    }
