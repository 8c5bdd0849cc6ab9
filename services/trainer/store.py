"""Jobs and their events in SQLite: one file that survives service restarts.

A job is kept as its ``Job`` message (the wire shape is the stored shape) plus the columns
queries need (its labels as JSON, so a label filter pages in SQL); its validated
``TrainingConfig``, ``ExportConfig`` or ``EvalConfig`` is stored beside it as JSON, and so is
the request it was made from, normalised (defaults applied, no version pinned), which a reused
idempotency key is compared with. Events get a per-job sequence from 1, assigned inside the
insert's transaction. Idempotency keys are UNIQUE, so two racing CreateJob calls with one key
cannot both insert. A pause asked of a running job is a flag beside it, like a cancel, until
its worker has stopped.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument, NotFound
from services.common.stubs import trainer_pb2

TERMINAL = frozenset(
    {
        trainer_pb2.JOB_STATE_SUCCEEDED,
        trainer_pb2.JOB_STATE_FAILED,
        trainer_pb2.JOB_STATE_CANCELLED,
    }
)
ACTIVE = (
    trainer_pb2.JOB_STATE_QUEUED,
    trainer_pb2.JOB_STATE_VALIDATING,
    trainer_pb2.JOB_STATE_RUNNING,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    state INTEGER NOT NULL,
    create_us INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL,
    job BLOB NOT NULL,
    request TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    pause_requested INTEGER NOT NULL DEFAULT 0,
    attempts_before_resume INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, create_us);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS published_checkpoints (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    step INTEGER NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (job_id, step)
);
"""
# Columns added after the first release: a file written before gets them, with their default.
ADDED_COLUMNS = {
    "request": "TEXT",
    "labels": "TEXT NOT NULL DEFAULT '{}'",
    "pause_requested": "INTEGER NOT NULL DEFAULT 0",
    "attempts_before_resume": "INTEGER NOT NULL DEFAULT 0",
}


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._add_columns()
        # The service calls in from the event loop and from worker threads.
        self._lock = threading.Lock()

    def _add_columns(self) -> None:
        """A file written by an older trainer gets the newer columns; its jobs keep their
        defaults (no request kept, no labels, no pause asked)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, declaration in ADDED_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        self._db.close()

    def create(
        self, job: trainer_pb2.Job, config_json: str, request_json: str | None = None
    ) -> tuple[trainer_pb2.Job, bool]:
        """Insert ``job``; with a known idempotency key return that job instead. -> (job, new)."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO jobs (id, idempotency_key, state, create_us, config, job, "
                    "request, labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.id,
                        job.idempotency_key or None,
                        job.state,
                        int(time.time() * 1e6),
                        config_json,
                        job.SerializeToString(),
                        request_json,
                        json.dumps(dict(job.labels), sort_keys=True),
                    ),
                )
                return job, True
            except sqlite3.IntegrityError:
                if not job.idempotency_key:
                    raise
        existing = self.by_idempotency_key(job.idempotency_key)
        assert existing is not None
        return existing, False

    def by_idempotency_key(self, key: str) -> trainer_pb2.Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT job FROM jobs WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return trainer_pb2.Job.FromString(row[0]) if row else None

    def get(self, job_id: str) -> trainer_pb2.Job:
        with self._lock:
            row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(
                f"no job {job_id!r}; list jobs with `tuneplex jobs list`",
                param="id",
                code="job_not_found",
            )
        return trainer_pb2.Job.FromString(row[0])

    def config(self, job_id: str) -> str:
        with self._lock:
            return self._db.execute("SELECT config FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]

    def request(self, job_id: str) -> str | None:
        """The normalised request ``job_id`` was made from (None for a job stored before
        requests were kept)."""
        with self._lock:
            row = self._db.execute("SELECT request FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def save(self, job: trainer_pb2.Job) -> trainer_pb2.Job:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, job = ? WHERE id = ?",
                (job.state, job.SerializeToString(), job.id),
            )
        return job

    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return bool(row and row[0])

    def request_pause(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET pause_requested = 1 WHERE id = ?", (job_id,))

    def resumed(self, job_id: str, attempts: int) -> None:
        """The pause of ``job_id`` is over; the ``attempts`` made before it do not count
        against the crash limit of the attempts after."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET pause_requested = 0, attempts_before_resume = ? WHERE id = ?",
                (attempts, job_id),
            )

    def attempts_before_resume(self, job_id: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT attempts_before_resume FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    def pause_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT pause_requested FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return bool(row and row[0])

    def record_published_checkpoint(self, job_id: str, step: int, version: str) -> None:
        """The version the checkpoint of ``step`` was published as (a retried attempt that
        publishes it again replaces the row)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO published_checkpoints (job_id, step, version) "
                "VALUES (?, ?, ?)",
                (job_id, step, version),
            )

    def published_checkpoints(self, job_id: str) -> dict[int, str]:
        """Step -> ``name@version`` of each checkpoint of ``job_id`` published so far."""
        with self._lock:
            rows = self._db.execute(
                "SELECT step, version FROM published_checkpoints WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {step: version for step, version in rows}

    def list(
        self,
        state: int,
        page_size: int,
        page_token: str,
        labels: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[trainer_pb2.Job], str]:
        """One page of jobs, newest first, in ``state`` (0: any) carrying every pair of
        ``labels`` (keys as ``labels.check_labels`` admits them)."""
        size = min(page_size or 50, 500)
        try:
            offset = int(page_token or 0)
        except ValueError:
            raise InvalidArgument(
                "page_token is not one this service returned", param="page_token"
            ) from None
        conditions: builtins.list[str] = ["state = ?"] if state else []
        args: builtins.list[int | str] = [state] if state else []
        for key, value in sorted((labels or {}).items()):
            conditions.append("json_extract(labels, ?) = ?")
            args += [f'$."{key}"', value]
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT job FROM jobs {where} ORDER BY create_us DESC, id LIMIT ? OFFSET ?",
                (*args, size + 1, offset),
            ).fetchall()
        jobs = [trainer_pb2.Job.FromString(r[0]) for r in rows[:size]]
        return jobs, str(offset + size) if len(rows) > size else ""

    def active(self) -> builtins.list[trainer_pb2.Job]:
        """Jobs a restarted service must pick up again, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT job FROM jobs WHERE state IN ({','.join('?' * len(ACTIVE))}) "
                "ORDER BY create_us",
                ACTIVE,
            ).fetchall()
        return [trainer_pb2.Job.FromString(r[0]) for r in rows]

    def append_event(self, job_id: str, event: trainer_pb2.JobEvent) -> trainer_pb2.JobEvent:
        event.time.CopyFrom(now())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (last,) = self._db.execute(
                    "SELECT COALESCE(MAX(sequence), 0) FROM events WHERE job_id = ?", (job_id,)
                ).fetchone()
                event.sequence = last + 1
                self._db.execute(
                    "INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
                    (job_id, event.sequence, event.SerializeToString()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return event

    def events(self, job_id: str, after_sequence: int = 0) -> builtins.list[trainer_pb2.JobEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence",
                (job_id, after_sequence),
            ).fetchall()
        return [trainer_pb2.JobEvent.FromString(r[0]) for r in rows]
