"""The registry's metadata in one SQLite file (plain sqlite3, WAL): the embedded default.

One connection behind a lock, called from worker threads (``asyncio.to_thread``). A write
transaction is ``BEGIN IMMEDIATE``: the only writer of the file until it commits, which is
what makes version numbering and alias moves atomic here. One process per file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.registry.metadata_database import SQLITE, Session
from services.registry.migrations import MIGRATIONS, split_statements


class SqliteDatabase:
    dialect = SQLITE

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.description = f"sqlite {path.name}"
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Session]:
        # A deferred transaction: the reads of one call see one snapshot of the file.
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            for number, sql in enumerate(MIGRATIONS, start=1):
                if number in done:
                    continue
                for statement in split_statements(sql):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (number,))
