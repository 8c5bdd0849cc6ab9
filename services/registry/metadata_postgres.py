"""The registry's metadata in PostgreSQL, for several registry replicas on one database.

Driver: psycopg 3 with our own numbered migrations (migrations_postgres.py), not SQLAlchemy
Core + Alembic. The store's SQL is already written once for both backends (metadata.py) and
the schema is six tables; an ORM layer and a second migration tool would add more code and
another dependency than the few differences they would hide. The migrations run in one
transaction under an advisory lock, so replicas starting together apply each one once.

What keeps replicas consistent is in the database, not in a process:

- a version number is taken by the one ``INSERT ... ON CONFLICT DO UPDATE SET next_version =
  next_version + 1 ... RETURNING`` that holds the artifact row's lock until the version's rows
  commit: two pushes of one name, on any replicas, get distinct numbers and no gaps;
- every other write starts by locking its artifact row (``SELECT ... FOR UPDATE``), so alias
  moves, compare-and-set promotions and deletes of one artifact take turns;
- reads run in a REPEATABLE READ READ ONLY transaction: one snapshot for all their statements.

One connection per process behind a lock (as SQLite's): a replica serves its calls one at a
time against the database; more throughput is more replicas. A dropped connection is opened
again on the next call; while the database is unreachable calls fail with UNAVAILABLE.

Nothing waits forever, since one stuck call would stop the replica's every call behind the lock:
a lock wait ends after ``lock_timeout`` (another replica's write, or an operator's open
transaction, holding the artifact), a statement after ``statement_timeout``, a transaction left
open by a stalled client after ``idle_in_transaction_session_timeout``, and TCP keepalives
notice a database host that vanished. A lock timeout, a deadlock or a serialization failure is
ABORTED (retry: the other write is done by then), a statement timeout UNAVAILABLE; both roll
back and keep the connection. A connection lost during COMMIT is UNAVAILABLE although the
version may have been written: the database alone knows, and a retry may add a version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from services.common.errors import Aborted, InvalidArgument, Unavailable
from services.registry.metadata_database import POSTGRES
from services.registry.migrations_postgres import MIGRATIONS

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10
LOCK_TIMEOUT_SECONDS = 5.0
STATEMENT_TIMEOUT_SECONDS = 30.0
IDLE_IN_TRANSACTION_TIMEOUT_SECONDS = 60.0
# libpq's TCP keepalives: first probe after 30 s idle, then every 10 s, dead after 3 unanswered.
# Defaults only: a URL that sets one keeps its own.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
# pg_advisory_xact_lock key of the migrations: any constant, the same in every replica.
MIGRATION_LOCK = 0x74756E65  # "tune"
MIGRATION_TIMEOUT_MS = 300_000
UNREACHABLE = "the registry's metadata database is unreachable: retry later"
BUSY = "another write to the same artifact was in the way: retry"
SLOW = "the registry's metadata database did not answer in time: retry later"
UNPARSABLE = "the metadata database URL cannot be parsed (see libpq's connection URIs)"
# The statement ended, the session did not: roll back and keep the connection.
_RETRY_ABORTED = (psycopg.errors.LockNotAvailable, psycopg.errors.TransactionRollback)


def describe(url: str) -> str:
    """``postgresql host:port/dbname`` for logs: where the database is, never its password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable URL)"
    where = f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}"
    return f"postgresql {where}/{parts.get('dbname') or parts.get('user') or ''}"


class _Session:
    """psycopg's connection with the store's ``?`` placeholders (psycopg's are ``%s``)."""

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]):
        self._conn = conn

    @staticmethod
    def _sql(sql: str) -> str:
        # The store's SQL has no '%' and no '?' but its placeholders (jsonb's '?' operators
        # are not used), so the rewrite is exact; a '%' would be read as a placeholder.
        assert "%" not in sql, "the store's SQL must not contain '%'"
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[object] = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(self._sql(sql), params)

    def executemany(self, sql: str, params: Iterable[Sequence[object]], /) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(self._sql(sql), params)


class PostgresDatabase:
    dialect = POSTGRES

    def __init__(
        self,
        url: str,
        *,
        lock_timeout_s: float = LOCK_TIMEOUT_SECONDS,
        statement_timeout_s: float = STATEMENT_TIMEOUT_SECONDS,
        idle_in_transaction_timeout_s: float = IDLE_IN_TRANSACTION_TIMEOUT_SECONDS,
    ):
        self._url = url
        self.description = describe(url)
        self._timeouts_ms = {
            "lock_timeout": round(lock_timeout_s * 1000),
            "statement_timeout": round(statement_timeout_s * 1000),
            "idle_in_transaction_session_timeout": round(idle_in_transaction_timeout_s * 1000),
        }
        self._lock = threading.Lock()
        self._conn = self._connect()
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            given = conninfo_to_dict(self._url)
        except psycopg.ProgrammingError:
            # Not logged either: psycopg's message quotes the token it choked on, which may be
            # the password.
            raise InvalidArgument(UNPARSABLE) from None
        defaults = {k: v for k, v in KEEPALIVES.items() if k not in given}
        try:
            conn = psycopg.connect(
                make_conninfo(self._url, **defaults),
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
            )
        except psycopg.ProgrammingError:
            raise InvalidArgument(UNPARSABLE) from None
        except psycopg.OperationalError as exc:
            log.error("metadata database %s: cannot connect: %s", self.description, exc)
            raise Unavailable(UNREACHABLE) from None
        try:
            for name, ms in self._timeouts_ms.items():  # the session's, for every transaction
                conn.execute(f"SET {name} = {int(ms)}")
        except psycopg.OperationalError as exc:
            conn.close()
            log.error("metadata database %s: cannot set up the session: %s", self.description, exc)
            raise Unavailable(UNREACHABLE) from None
        return conn

    @contextmanager
    def write(self) -> Iterator[_Session]:
        with self._transaction("BEGIN") as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[_Session]:
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as session:
            yield session

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[_Session]:
        with self._lock:
            self._begin(begin)
            try:
                yield _Session(self._conn)
            except psycopg.OperationalError as exc:
                if self._conn.broken:
                    self._lost(exc)
                    raise Unavailable(UNREACHABLE) from None
                self._rollback()
                raise self._retryable(exc) from None
            except BaseException:
                self._rollback()
                raise
            try:
                self._conn.execute("COMMIT")
            except psycopg.OperationalError as exc:
                # Lost here, the COMMIT may have reached the database and been applied: the
                # caller cannot know (the module's docstring).
                if self._conn.broken:
                    self._lost(exc)
                    raise Unavailable(UNREACHABLE) from None
                self._rollback()  # a failed COMMIT has ended the transaction: a no-op then
                raise self._retryable(exc) from None

    def _retryable(self, exc: psycopg.OperationalError) -> Aborted | Unavailable:
        """The error of a statement that failed on a connection that is still good."""
        log.warning("metadata database %s: %s", self.description, exc)
        if isinstance(exc, _RETRY_ABORTED):
            return Aborted(BUSY, code="metadata_busy")
        return Unavailable(SLOW)  # a statement timeout; or the server short of a resource

    def _begin(self, begin: str) -> None:
        """BEGIN on the connection, opening it again if it dropped (a database restart, an
        idle timeout): nothing of this transaction has run yet, so once more is safe."""
        try:
            if self._conn.closed:
                self._conn = self._connect()
            self._conn.execute(begin)
        except psycopg.OperationalError as exc:
            log.warning(
                "metadata database %s: connection lost (%s), reconnecting", self.description, exc
            )
            self._conn.close()
            self._conn = self._connect()
            try:
                self._conn.execute(begin)
            except psycopg.OperationalError as again:
                self._lost(again)
                raise Unavailable(UNREACHABLE) from None

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except psycopg.OperationalError as exc:
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        log.error("metadata database %s: %s", self.description, exc)
        self._conn.close()  # opened again by the next call

    def _migrate(self) -> None:
        with self.write() as db:
            # Another replica's migration may hold the lock longer than a call's lock_timeout.
            db.execute(f"SET LOCAL lock_timeout = {MIGRATION_TIMEOUT_MS}")
            db.execute(f"SET LOCAL statement_timeout = {MIGRATION_TIMEOUT_MS}")
            db.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            for number, script in enumerate(MIGRATIONS, start=1):
                if number in done:
                    continue
                self._conn.execute(script)  # several statements: psycopg's simple protocol
                db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (number,))
