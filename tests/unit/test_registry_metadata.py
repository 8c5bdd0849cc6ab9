"""The registry's metadata store: on a database written before tombstones, names deleted then
keep the numbers that surviving lineages pin; labels of versions and the filter on them."""

from __future__ import annotations

import json
import sqlite3

import pytest

from services.registry.metadata import FileRow, MetadataStore, NewVersion
from services.registry.migrations import MIGRATIONS, split_statements
from services.registry.names import parse_ref


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


def test_labels_come_back_and_old_versions_have_none(tmp_path):
    path = tmp_path / "registry.db"
    _old_database(path)
    meta = MetadataStore(path)
    assert meta.resolve("adapter", parse_ref("kept-lora")).labels == {}
    _push_labelled(meta, "owned", {"tuneplex.owner": "team-a", "openai.purpose": "fine-tune"})
    assert meta.resolve("dataset", parse_ref("owned@1")).labels == {
        "openai.purpose": "fine-tune",
        "tuneplex.owner": "team-a",
    }
    assert meta.list_versions("dataset", "owned")[0].labels["tuneplex.owner"] == "team-a"


def test_label_filter_reads_the_latest_version_and_pages_in_sql(tmp_path):
    meta = MetadataStore(tmp_path / "registry.db")
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


def test_labels_are_as_immutable_as_their_version(tmp_path):
    meta = MetadataStore(tmp_path / "registry.db")
    _push_labelled(meta, "fixed", {"k": "v"})
    db = sqlite3.connect(tmp_path / "registry.db")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        db.execute("UPDATE version_labels SET value = 'w'")
    db.close()
