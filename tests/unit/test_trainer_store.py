"""The job store: idempotency keys are unique, event sequences are per job and gap-free, and
what is stored survives reopening the file (a service restart)."""

from __future__ import annotations

import pytest

from services.common.errors import NotFound
from services.common.stubs import trainer_pb2
from services.trainer.store import JobStore


def job(job_id: str, key: str = "", state=trainer_pb2.JOB_STATE_QUEUED) -> trainer_pb2.Job:
    return trainer_pb2.Job(id=job_id, idempotency_key=key, state=state)


def test_same_idempotency_key_returns_the_first_job(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    first, created = store.create(job("job-1", "k"), "{}")
    again, created_again = store.create(job("job-2", "k"), "{}")
    assert created and not created_again and again.id == "job-1"
    store.create(job("job-3"), "{}")
    store.create(job("job-4"), "{}")  # no key: never a conflict
    assert len(store.list(0, 10, "")[0]) == 3


def test_events_are_sequenced_per_job_and_survive_a_reopen(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.create(job("a"), "{}")
    store.create(job("b"), "{}")
    for name in ("a", "b", "a"):
        store.append_event(name, trainer_pb2.JobEvent(log=trainer_pb2.LogLine(message=name)))
    store.close()
    store = JobStore(tmp_path / "jobs.sqlite")
    assert [e.sequence for e in store.events("a")] == [1, 2]
    assert [e.sequence for e in store.events("a", after_sequence=1)] == [2]
    assert [e.sequence for e in store.events("b")] == [1]
    assert [j.id for j in store.active()] == ["a", "b"]


def test_finished_jobs_are_not_recovered_and_unknown_ids_are_not_found(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.create(job("done", state=trainer_pb2.JOB_STATE_SUCCEEDED), "{}")
    store.create(job("running", state=trainer_pb2.JOB_STATE_RUNNING), "{}")
    assert [j.id for j in store.active()] == ["running"]
    with pytest.raises(NotFound, match="tuneplex jobs list"):
        store.get("nope")


def test_pages_walk_every_job_once(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    for i in range(5):
        store.create(job(f"j{i}"), "{}")
    seen, token = [], ""
    while True:
        page, token = store.list(0, 2, token)
        seen += [j.id for j in page]
        if not token:
            break
    assert sorted(seen) == [f"j{i}" for i in range(5)]
