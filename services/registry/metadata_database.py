"""What the registry's metadata store needs of a database, so that one store (metadata.py) and
its SQL serve both backends: SQLite (metadata_sqlite.py, the embedded default) and PostgreSQL
(metadata_postgres.py, for several registry replicas on one database).

The store writes its SQL once, with ``?`` placeholders, in the subset both dialects agree on
(``ON CONFLICT ... DO UPDATE``, ``RETURNING``, row values). What differs is named here, small
and explicit: how a write locks an artifact row, and how a JSON field is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol


class Rows(Protocol):
    """What a statement returns: sqlite3's and psycopg's cursors both are this."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Session(Protocol):
    """One transaction's statements; rows come back as tuples."""

    def execute(self, sql: str, params: Any = (), /) -> Rows: ...

    def executemany(self, sql: str, params: Iterable[Any], /) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    name: Literal["sqlite", "postgresql"]
    # Appended to the SELECT of the artifact row a write is about: PostgreSQL locks the row
    # until commit, so two replicas' writes to one artifact take turns. SQLite needs nothing:
    # BEGIN IMMEDIATE already makes every write transaction the only one.
    lock_row: str

    def json_text(self, column: str, path: str) -> str:
        """SQL for the text at ``path`` (keys joined by dots, e.g. ``evaluation.model``) of
        the JSON text ``column``; NULL where the path is absent. ``path`` is ours, never input."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.{path}')"
        return f"({column}::jsonb #>> '{{{path.replace('.', ',')}}}')"


SQLITE = Dialect("sqlite", lock_row="")
POSTGRES = Dialect("postgresql", lock_row=" FOR UPDATE")


class MetadataDatabase(Protocol):
    """A connection (or its stand-in) that hands out transactions. ``write`` transactions see
    the latest committed state and are atomic; ``read`` ones see one consistent snapshot."""

    dialect: Dialect
    # Shown in logs: the backend and where it is, never a password.
    description: str

    def write(self) -> AbstractContextManager[Session]: ...

    def read(self) -> AbstractContextManager[Session]: ...

    def close(self) -> None: ...
