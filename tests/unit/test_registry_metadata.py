"""The registry's metadata store, on both backends (SQLite, the default; PostgreSQL, for
replicas) where the semantics are the store's: numbering that never reuses a number, tombstones,
aliases and their compare-and-set, labels of versions and the filter on them, immutability, the
evaluations query, byte order of names, and two stores on one database (two replicas) pushing
one name at once. SQLite only: on a database written before tombstones, names deleted then keep
the numbers that surviving lineages pin.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from services.common.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.registry.metadata import FileRow, MetadataStore, NewVersion
from services.registry.metadata_postgres import PostgresDatabase
from services.registry.migrations import MIGRATIONS, split_statements
from services.registry.names import parse_ref


@dataclass
class Backend:
    """One empty database of one backend: ``open()`` a store on it (each store is what one
    registry process holds), ``raw(sql)`` runs a statement outside the store."""

    name: str
    open_store: Callable[[], MetadataStore]
    raw: Callable[[str], None]
    path: Path | None = None  # SQLite's file
    url: str = ""  # PostgreSQL's database
    opened: list[MetadataStore] = field(default_factory=list)

    def open(self) -> MetadataStore:
        store = self.open_store()
        self.opened.append(store)
        return store


def _sqlite_raw(path: Path) -> Callable[[str], None]:
    def raw(sql: str) -> None:
        db = sqlite3.connect(path)
        try:
            db.execute(sql)
            db.commit()
        finally:
            db.close()

    return raw


def _postgres_raw(url: str) -> Callable[[str], None]:
    def raw(sql: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)

    return raw


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "registry.db"
        made = Backend("sqlite", lambda: MetadataStore(path), _sqlite_raw(path), path=path)
    else:
        url = request.getfixturevalue("postgres_cluster").create_database()
        made = Backend(
            "postgres", lambda: MetadataStore(PostgresDatabase(url)), _postgres_raw(url), url=url
        )
    try:
        yield made
    finally:
        for store in made.opened:
            store.close()


def _old_database(path) -> None:
    """A database at schema 1 whose artifacts ``gone-train`` and ``gone-base`` were deleted
    (rows and numbering gone), while adapter ``kept-lora@1`` still names them; ``kept-train``
    was deleted down to its @1 although the adapter's validation set is its @5."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
    for statement in split_statements(MIGRATIONS[0]):
        db.execute(statement)
    db.execute("INSERT INTO schema_migrations VALUES (1)")
    db.execute(
        "INSERT INTO artifacts (id, kind, name, next_version, create_time, update_time)"
        " VALUES (1, 'adapter', 'kept-lora', 2, 0, 0), (2, 'dataset', 'kept-train', 2, 0, 0)"
    )
    lineage = {
        "dataset": "gone-train@3",
        "validationDataset": "kept-train@5",
        "baseModel": "gone-base@2",
        "databases": ["gone-db@7"],
    }
    db.execute(
        "INSERT INTO versions VALUES (1, 1, ?, 0, '', ?, '{}', 'gone-base@2', 0),"
        " (2, 1, ?, 0, '', '{}', '{}', '', 0)",
        ("a" * 64, json.dumps(lineage), "b" * 64),
    )
    db.commit()
    db.close()


def _push(meta: MetadataStore, kind: str, name: str) -> int:
    new = NewVersion(kind, name, "c" * 64, 1, [FileRow("f", 1, "d" * 64)])
    return meta.publish(new).version


def test_migration_keeps_the_numbers_lineages_pin(tmp_path):
    path = tmp_path / "registry.db"
    _old_database(path)
    meta = MetadataStore(path)
    assert _push(meta, "dataset", "gone-train") == 4
    assert _push(meta, "model", "gone-base") == 3
    assert _push(meta, "dataset", "gone-db") == 8
    assert _push(meta, "dataset", "kept-train") == 6
    assert _push(meta, "dataset", "never-named") == 1
    assert [a.name for a in meta.list_artifacts("dataset", None, 10)] == [
        "gone-db",
        "gone-train",
        "kept-train",
        "never-named",
    ]


def test_rebuilt_tombstones_are_not_listed(tmp_path):
    path = tmp_path / "registry.db"
    _old_database(path)
    meta = MetadataStore(path)
    assert [(a.kind, a.name) for a in meta.list_artifacts(None, None, 10)] == [
        ("adapter", "kept-lora"),
        ("dataset", "kept-train"),
    ]


def _push_labelled(meta: MetadataStore, name: str, labels: dict[str, str]) -> int:
    new = NewVersion("dataset", name, "c" * 64, 1, [FileRow("f", 1, "d" * 64)], labels=labels)
    return meta.publish(new).version


def test_labels_of_versions_written_before_labels_are_empty(tmp_path):
    path = tmp_path / "registry.db"
    _old_database(path)
    meta = MetadataStore(path)
    assert meta.resolve("adapter", parse_ref("kept-lora")).labels == {}


def test_labels_come_back(backend):
    meta = backend.open()
    _push_labelled(meta, "owned", {"tuneplex.owner": "team-a", "openai.purpose": "fine-tune"})
    assert meta.resolve("dataset", parse_ref("owned@1")).labels == {
        "openai.purpose": "fine-tune",
        "tuneplex.owner": "team-a",
    }
    assert meta.list_versions("dataset", "owned")[0].labels["tuneplex.owner"] == "team-a"


def test_label_filter_reads_the_latest_version_and_pages_in_sql(backend):
    meta = backend.open()
    mine, other = {"tuneplex.owner": "a"}, {"tuneplex.owner": "b"}
    for name, labels in [("d1", mine), ("d2", other), ("d3", mine), ("d4", {}), ("d5", mine)]:
        _push_labelled(meta, name, labels)
    _push_labelled(meta, "d5", other)  # its latest version is no longer a's

    def names(labels, after=None, limit=10):
        return [a.name for a in meta.list_artifacts("dataset", after, limit, labels)]

    assert names(mine) == ["d1", "d3"]
    # a page of one holds a match, not the first artifact of the kind
    assert names(mine, limit=1) == ["d1"]
    assert names(mine, after=("dataset", "d1"), limit=1) == ["d3"]
    assert names(mine, after=("dataset", "d3"), limit=1) == []
    assert names({"tuneplex.owner": "a", "openai.purpose": "x"}) == []  # every pair must match
    assert names(other) == ["d2", "d5"]

    meta.delete("dataset", "d5", version=2)  # back to @1, a's again
    assert names(mine) == ["d1", "d3", "d5"]


@pytest.mark.parametrize(
    "statement",
    ["UPDATE version_labels SET value = 'w'", "UPDATE versions SET description = 'changed'"],
)
def test_versions_and_labels_are_immutable(backend, statement):
    meta = backend.open()
    _push_labelled(meta, "fixed", {"k": "v"})
    errors = (sqlite3.IntegrityError, psycopg.errors.RaiseException)
    with pytest.raises(errors, match="immutable"):
        backend.raw(statement)
    assert meta.resolve("dataset", parse_ref("fixed@1")).labels == {"k": "v"}
    assert meta.resolve("dataset", parse_ref("fixed@1")).description == ""


def _push_to(meta: MetadataStore, name: str, kind: str = "dataset", base_model: str = "") -> int:
    files = [FileRow("a.bin", 3, "a" * 64), FileRow("b.bin", 5, "b" * 64)]
    new = NewVersion(kind, name, "c" * 64, 8, files, base_model=base_model)
    return meta.publish(new).version


def test_numbers_are_never_reused_and_tombstones_read_as_deleted(backend):
    meta = backend.open()
    assert [_push_to(meta, "nums") for _ in range(3)] == [1, 2, 3]
    row = meta.resolve("dataset", parse_ref("nums@2"))
    assert [(f.path, f.size) for f in row.files] == [("a.bin", 3), ("b.bin", 5)]
    meta.delete("dataset", "nums", version=3)  # the last one
    with pytest.raises(NotFound, match="nums@3 was deleted"):
        meta.resolve("dataset", parse_ref("nums@3"))
    with pytest.raises(NotFound, match="has no version 9"):
        meta.resolve("dataset", parse_ref("nums@9"))
    assert meta.resolve("dataset", parse_ref("nums")).version == 2
    assert _push_to(meta, "nums") == 4

    meta.delete("dataset", "nums")  # every version: a tombstone
    with pytest.raises(NotFound, match="was deleted"):
        meta.get_artifact("dataset", "nums")
    assert meta.list_artifacts("dataset", None, 10) == []
    with pytest.raises(NotFound, match="no dataset named"):
        meta.get_artifact("dataset", "never")
    revived = meta.publish(NewVersion("dataset", "nums", "c" * 64, 1, []))
    assert revived.version == 5
    assert meta.get_artifact("dataset", "nums").latest_version == 5


def test_aliases_move_atomically_and_guard_deletes(backend):
    meta = backend.open()
    for _ in range(3):
        _push_to(meta, "al")
    assert meta.set_alias("dataset", "al", "prod", 1).aliases == {"prod": 1}
    assert meta.set_alias("dataset", "al", "prod", 2).aliases == {"prod": 2}
    with pytest.raises(NotFound, match="has no version 7"):
        meta.set_alias("dataset", "al", "prod", 7)
    with pytest.raises(FailedPrecondition, match="prod"):
        meta.delete("dataset", "al", version=2)
    # The compare-and-set of promotions: a decision about the holder it read, or nothing.
    with pytest.raises(Aborted, match="retry"):
        meta.move_alias_if("dataset", "al", "prod", 3, expected=1)
    assert meta.move_alias_if("dataset", "al", "prod", 3, expected=2).aliases == {"prod": 3}
    assert meta.move_alias_if("dataset", "al", "new", 1, expected=None).aliases["new"] == 1
    assert meta.resolve("dataset", parse_ref("al@prod")).aliases == ["prod"]
    meta.delete("dataset", "al", version=3, force=True)  # takes its alias with it
    assert meta.get_artifact("dataset", "al").aliases == {"new": 1}
    meta.delete_alias("dataset", "al", "new")
    with pytest.raises(NotFound, match="no alias"):
        meta.delete_alias("dataset", "al", "new")


def test_a_base_model_in_use_is_not_deleted(backend):
    meta = backend.open()
    _push_to(meta, "base", kind="model")
    _push_to(meta, "lora", kind="adapter", base_model="base@1")
    with pytest.raises(FailedPrecondition, match="base model of adapter lora@1"):
        meta.delete("model", "base")
    meta.delete("model", "base", force=True)


def test_names_list_in_byte_order_whatever_the_locale(backend):
    meta = backend.open()
    for name in ["ab", "a-b", "B", "a", "a_b"]:
        _push_to(meta, name)
    expected = ["B", "a", "a-b", "a_b", "ab"]  # bytes: 'B' < 'a', '-' < '_' < 'b'
    assert [a.name for a in meta.list_artifacts("dataset", None, 10)] == expected
    assert [a.name for a in meta.list_artifacts("dataset", ("dataset", "a-b"), 10)] == expected[3:]


def _evaluation(meta: MetadataStore, name: str, model: str, eval_set: str, sha: str) -> None:
    info = {
        "evaluation": {
            "model": model,
            "modelKind": "ARTIFACT_KIND_ADAPTER",
            "evalSet": eval_set,
            "gradersSha256": sha,
        }
    }
    meta.publish(NewVersion("evaluation", name, "e" * 64, 1, [], info_json=json.dumps(info)))


def test_evaluations_are_found_by_their_json_fields(backend):
    meta = backend.open()
    _evaluation(meta, "ev", "lora@1", "set@1", "g1")
    _evaluation(meta, "ev", "lora@1", "set@1", "g2")
    _evaluation(meta, "ev", "lora@2", "set@1", "g1")
    _evaluation(meta, "other", "lora@1", "set@2", "g1")
    found = meta.evaluations("lora@1", "adapter", "set@1")
    assert [(r.name, r.version) for r in found] == [("ev", 2), ("ev", 1)]  # newest first
    assert [r.version for r in meta.evaluations("lora@1", "adapter", "set@1", "g1")] == [1]
    assert meta.evaluations("lora@1", "model", "set@1") == []


def test_two_stores_on_one_database_number_one_name_without_gaps(backend):
    """Two registry processes (here two stores, each with its own connection) pushing the same
    name at once: every push gets its own number, and the numbers have no gaps."""
    replicas = [backend.open(), backend.open()]
    pushes = 15
    got: list[int] = []
    start = threading.Barrier(len(replicas))

    def push_all(meta: MetadataStore) -> None:
        start.wait()
        for _ in range(pushes):
            got.append(_push_to(meta, "shared"))

    threads = [threading.Thread(target=push_all, args=(m,)) for m in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == list(range(1, 2 * pushes + 1))
    for meta in replicas:
        versions = meta.list_versions("dataset", "shared")
        assert [v.version for v in versions] == list(range(2 * pushes, 0, -1))
        assert all(len(v.files) == 2 for v in versions)
    # An alias moved through one is what the other resolves.
    replicas[0].set_alias("dataset", "shared", "prod", 7)
    assert replicas[1].resolve("dataset", parse_ref("shared@prod")).version == 7


def test_reopening_applies_no_migration_twice(backend):
    _push_to(backend.open(), "kept")
    again = backend.open()
    assert again.resolve("dataset", parse_ref("kept")).version == 1
    assert _push_to(again, "kept") == 2


def test_postgres_store_reconnects_after_its_connection_is_dropped(postgres_cluster):
    """A database restart or an idle timeout ends the server side of the connection: the next
    call opens a new one instead of failing for the rest of the process's life."""
    url = postgres_cluster.create_database()
    meta = MetadataStore(PostgresDatabase(url))
    try:
        assert _push_to(meta, "kept") == 1
        with psycopg.connect(url, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert ended == (1,)
        assert meta.resolve("dataset", parse_ref("kept")).version == 1
        assert _push_to(meta, "kept") == 2
    finally:
        meta.close()


def test_unreachable_postgres_is_unavailable_without_the_password(tmp_path, caplog):
    url = f"postgresql://tuneplex:hunter2-secret@/tuneplex?host={tmp_path}&port=1"
    with pytest.raises(Unavailable, match="metadata database is unreachable") as err:
        PostgresDatabase(url)
    assert "hunter2" not in err.value.message and "hunter2" not in caplog.text
    assert str(tmp_path) not in err.value.message  # where it is: for the log, not the caller


# --- writes that waited on another replica's write ----------------------------------------
# A second replica's write to the same artifact waits on the first one's lock (PostgreSQL's row
# lock, SQLite's file lock). What it does once the first commits must rest on what that one
# committed, not on what the database held when the wait began.


def _while_held(backend: Backend, statements: list[str], action: Callable[[], object]) -> object:
    """Run ``statements`` in a transaction of another connection (another replica's write, held
    open), start ``action`` (a store call) and let it block on that transaction's locks, then
    commit. Returns what ``action`` returned or raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    if backend.path is not None:
        conn = sqlite3.connect(backend.path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn = psycopg.connect(backend.url)
    try:
        for sql in statements:
            conn.execute(sql)
        thread = threading.Thread(target=run)
        thread.start()
        _wait_until_blocked(backend, thread)
        conn.commit()
        thread.join(timeout=30)
    finally:
        conn.close()
    assert outcome, "the store's call did not finish"
    return outcome[0]


def _wait_until_blocked(backend: Backend, thread: threading.Thread) -> None:
    if backend.name == "sqlite":  # busy_timeout: it waits up to 5 s for the file lock
        thread.join(timeout=0.5)
        return
    with psycopg.connect(backend.url, autocommit=True) as conn:
        for _ in range(200):
            (waiting,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting:
                return
            threading.Event().wait(0.05)
    raise AssertionError("the store's call never waited on the held lock")


def _delete_all_held(kind: str, name: str) -> list[str]:
    """What another replica's delete of every version of ``kind/name`` does, uncommitted."""
    art = f"(SELECT id FROM artifacts WHERE kind = '{kind}' AND name = '{name}')"
    return [
        f"UPDATE artifacts SET update_time = update_time WHERE id = {art}",  # its lock
        f"DELETE FROM aliases WHERE artifact_id = {art}",
        f"DELETE FROM versions WHERE artifact_id = {art}",
    ]


@pytest.mark.parametrize("kind", ["dataset", "model"])
def test_a_delete_all_that_waited_on_another_finds_the_name_deleted(backend, kind):
    meta = backend.open()
    _push_to(meta, "twice", kind=kind)
    _push_to(meta, "twice", kind=kind)
    got = _while_held(backend, _delete_all_held(kind, "twice"), lambda: meta.delete(kind, "twice"))
    assert isinstance(got, NotFound), got
    assert "was deleted" in got.message
    assert meta.list_artifacts(kind, None, 10) == []


def test_an_alias_delete_that_waited_on_a_delete_all_finds_the_name_deleted(backend):
    meta = backend.open()
    _push_to(meta, "aliased")
    meta.set_alias("dataset", "aliased", "prod", 1)
    held = _delete_all_held("dataset", "aliased")
    got = _while_held(backend, held, lambda: meta.delete_alias("dataset", "aliased", "prod"))
    assert isinstance(got, NotFound), got
    assert "was deleted" in got.message


def test_a_push_that_waited_on_a_delete_all_starts_a_new_artifact(backend):
    meta = backend.open()
    _push_to(meta, "reborn")
    backend.raw("UPDATE artifacts SET create_time = 1, update_time = 1")
    held = _delete_all_held("dataset", "reborn")
    row = _while_held(backend, held, lambda: _push_to(meta, "reborn"))
    assert row == 2  # the numbering goes on
    assert meta.get_artifact("dataset", "reborn").create_time > 1  # but a new artifact


def test_concurrent_first_pushes_keep_the_first_create_time(backend):
    """Another replica's first push of the name, uncommitted (its artifact row and version 1,
    created at time 100): this push waits for it, takes version 2, and the artifact is still
    the one created at 100."""
    meta = backend.open()
    held = [
        "INSERT INTO artifacts (kind, name, next_version, create_time, update_time)"
        " VALUES ('dataset', 'first', 2, 100, 100)",
        "INSERT INTO versions (artifact_id, version, manifest_sha256, total_size, description,"
        " lineage_json, info_json, base_model, create_time) SELECT id, 1, 'c', 0, '', '{}',"
        " '{}', '', 100 FROM artifacts WHERE name = 'first'",
    ]
    assert _while_held(backend, held, lambda: _push_to(meta, "first")) == 2
    assert meta.get_artifact("dataset", "first").create_time == 100


# --- text the databases cannot hold -------------------------------------------------------


@pytest.mark.parametrize(
    "new",
    [
        NewVersion("dataset", "nul", "c" * 64, 1, [], description="a\x00b"),
        NewVersion("dataset", "nul", "c" * 64, 1, [], description="bell\x07"),
        NewVersion("dataset", "nul", "c" * 64, 1, [], info_json=json.dumps({"x": "a\x00b"})),
        NewVersion("dataset", "nul", "c" * 64, 1, [], lineage_json=json.dumps({"d": "\x00"})),
        NewVersion("dataset", "nul", "c" * 64, 1, [], labels={"k": "a\x00"}),
    ],
    ids=["description-nul", "description-bell", "info", "lineage", "label"],
)
def test_text_with_nul_or_control_characters_is_refused(backend, new):
    meta = backend.open()
    with pytest.raises(InvalidArgument, match="control character"):
        meta.publish(new)
    assert meta.list_artifacts(None, None, 10) == []
    # ... and the evaluations query, which reads every version's JSON, still works.
    _evaluation(meta, "ev", "lora@1", "set@1", "g1")
    assert [r.version for r in meta.evaluations("lora@1", "adapter", "set@1")] == [1]


def test_descriptions_keep_their_tabs_and_newlines(backend):
    meta = backend.open()
    text = "line one\n\tindented\r\nend"
    meta.publish(NewVersion("dataset", "prose", "c" * 64, 1, [], description=text))
    assert meta.resolve("dataset", parse_ref("prose")).description == text


# --- PostgreSQL: waits have an end, and the connection survives them ---------------------


def test_a_push_held_past_the_lock_timeout_is_aborted_and_the_store_goes_on(postgres_cluster):
    """Another connection holds the artifact row longer than lock_timeout (a stuck replica, an
    operator's open transaction): the push fails with a status a client retries, not INTERNAL,
    and the same connection serves the next calls."""
    url = postgres_cluster.create_database()
    meta = MetadataStore(PostgresDatabase(url, lock_timeout_s=0.2))
    try:
        assert _push_to(meta, "busy") == 1
        with meta._database.read() as db:  # noqa: SLF001 - which server process serves it
            (pid,) = db.execute("SELECT pg_backend_pid()").fetchone()
        with psycopg.connect(url) as holder:
            holder.execute("SELECT id FROM artifacts WHERE name = 'busy' FOR UPDATE")
            with pytest.raises(Aborted, match="retry"):
                _push_to(meta, "busy")
            with pytest.raises(Aborted, match="retry"):
                meta.set_alias("dataset", "busy", "prod", 1)
        assert _push_to(meta, "busy") == 2  # the aborted push took no number
        with meta._database.read() as db:  # noqa: SLF001
            assert db.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
    finally:
        meta.close()


def test_postgres_sessions_have_timeouts_and_keepalives(postgres_cluster):
    meta = MetadataStore(PostgresDatabase(postgres_cluster.create_database()))
    try:
        with meta._database.read() as db:  # noqa: SLF001 - the session's settings
            shown_settings = {
                name: db.execute(f"SHOW {name}").fetchone()[0]
                for name in (
                    "lock_timeout",
                    "statement_timeout",
                    "idle_in_transaction_session_timeout",
                )
            }
        assert shown_settings == {
            "lock_timeout": "5s",
            "statement_timeout": "30s",
            "idle_in_transaction_session_timeout": "1min",
        }
        # A dead peer (a database host gone without a FIN) is noticed in about a minute.
        params = meta._database._conn.info.get_parameters()  # noqa: SLF001
        assert params.get("keepalives_idle") == "30"
    finally:
        meta.close()


def test_an_unparsable_url_is_refused_without_the_password(caplog):
    with pytest.raises(InvalidArgument, match="cannot be parsed") as err:
        PostgresDatabase("postgresql://tuneplex:hunter2%ZZ@db/x")
    assert "hunter2" not in err.value.message and "hunter2" not in caplog.text
