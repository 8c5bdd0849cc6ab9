"""The registry's metadata store on a database written before tombstones: names deleted then
keep the numbers that surviving lineages pin."""

from __future__ import annotations

import json
import sqlite3

from services.registry.metadata import FileRow, MetadataStore, NewVersion
from services.registry.migrations import MIGRATIONS, split_statements


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
