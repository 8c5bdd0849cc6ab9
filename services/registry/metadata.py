"""Metadata of artifacts, versions, aliases and files in SQLite (plain sqlite3, WAL).

One connection behind a lock, called from worker threads (``asyncio.to_thread``). Every write
is one transaction: a version appears with all its file rows or not at all, an alias moves in
one statement. Versions are immutable: a trigger refuses any UPDATE of a version row.

Version numbers are never reused: deleting versions, even the last one, keeps the artifact row
with its ``next_version`` as a tombstone, so ``name@3`` in a lineage can never come to mean
other bytes. A tombstone (a row with no versions left) reads as not found ("was deleted") and
is not listed; the next push of its name continues its numbering.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import Aborted, FailedPrecondition, NotFound, shown
from services.registry.migrations import MIGRATIONS, split_statements
from services.registry.names import Ref


@dataclass(frozen=True)
class FileRow:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VersionRow:
    kind: str
    name: str
    version: int
    manifest_sha256: str
    total_size: int
    description: str
    lineage_json: str
    info_json: str
    base_model: str
    create_time: float
    files: list[FileRow] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ArtifactRow:
    kind: str
    name: str
    latest_version: int
    aliases: dict[str, int]
    create_time: float
    update_time: float


@dataclass(frozen=True)
class NewVersion:
    kind: str
    name: str
    manifest_sha256: str
    total_size: int
    files: list[FileRow]
    description: str = ""
    lineage_json: str = "{}"
    info_json: str = "{}"
    base_model: str = ""
    labels: dict[str, str] = field(default_factory=dict)


class MetadataStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            for number, sql in enumerate(MIGRATIONS, start=1):
                if number in done:
                    continue
                for statement in split_statements(sql):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (number,))

    # --- writes -------------------------------------------------------------------------

    def publish(self, new: NewVersion) -> VersionRow:
        """Add the next version of ``new.kind/new.name`` (creating the artifact), with its files."""
        now = time.time()
        with self._tx() as db:
            # A tombstone revived by this push is a new artifact to its readers: it gets a new
            # create_time, and keeps only its numbering.
            db.execute(
                "INSERT INTO artifacts (kind, name, create_time, update_time) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (kind, name) DO UPDATE SET update_time = excluded.update_time,"
                " create_time = CASE WHEN EXISTS (SELECT 1 FROM versions"
                " WHERE versions.artifact_id = artifacts.id) THEN artifacts.create_time"
                " ELSE excluded.create_time END",
                (new.kind, new.name, now, now),
            )
            art_id, version = db.execute(
                "SELECT id, next_version FROM artifacts WHERE kind = ? AND name = ?",
                (new.kind, new.name),
            ).fetchone()
            db.execute("UPDATE artifacts SET next_version = ? WHERE id = ?", (version + 1, art_id))
            db.execute(
                "INSERT INTO versions (artifact_id, version, manifest_sha256, total_size,"
                " description, lineage_json, info_json, base_model, create_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    art_id,
                    version,
                    new.manifest_sha256,
                    new.total_size,
                    new.description,
                    new.lineage_json,
                    new.info_json,
                    new.base_model,
                    now,
                ),
            )
            db.executemany(
                "INSERT INTO files (artifact_id, version, position, path, size, sha256)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(art_id, version, i, f.path, f.size, f.sha256) for i, f in enumerate(new.files)],
            )
            db.executemany(
                "INSERT INTO version_labels (artifact_id, version, key, value) VALUES (?, ?, ?, ?)",
                [(art_id, version, k, v) for k, v in sorted(new.labels.items())],
            )
            return self._version(db, art_id, new.kind, new.name, version)

    def set_alias(self, kind: str, name: str, alias: str, version: int) -> ArtifactRow:
        with self._tx() as db:
            art_id = self._artifact_id(db, kind, name)
            self._require_version(db, art_id, kind, name, version)
            db.execute(
                "INSERT INTO aliases (artifact_id, alias, version) VALUES (?, ?, ?)"
                " ON CONFLICT (artifact_id, alias) DO UPDATE SET version = excluded.version",
                (art_id, alias, version),
            )
            db.execute("UPDATE artifacts SET update_time = ? WHERE id = ?", (time.time(), art_id))
            return self._artifact(db, art_id)

    def move_alias_if(
        self, kind: str, name: str, alias: str, version: int, expected: int | None
    ) -> ArtifactRow:
        """Point ``alias`` at ``version`` only if it still points at ``expected`` (None: the
        alias does not exist): the promotion gate decided on that holder, and a move made
        meanwhile must not be overwritten by a decision about another version."""
        with self._tx() as db:
            art_id = self._artifact_id(db, kind, name)
            self._require_version(db, art_id, kind, name, version)
            row = db.execute(
                "SELECT version FROM aliases WHERE artifact_id = ? AND alias = ?", (art_id, alias)
            ).fetchone()
            now = row[0] if row else None
            if now != expected:
                was = f"version {expected}" if expected else "nothing"
                raise Aborted(
                    f"{name}@{alias} moved while the promotion was checked (from {was} to "
                    f"{f'version {now}' if now else 'nothing'}): retry the promotion",
                    param="alias",
                    code="alias_moved",
                )
            db.execute(
                "INSERT INTO aliases (artifact_id, alias, version) VALUES (?, ?, ?)"
                " ON CONFLICT (artifact_id, alias) DO UPDATE SET version = excluded.version",
                (art_id, alias, version),
            )
            db.execute("UPDATE artifacts SET update_time = ? WHERE id = ?", (time.time(), art_id))
            return self._artifact(db, art_id)

    def delete_alias(self, kind: str, name: str, alias: str) -> None:
        with self._tx() as db:
            art_id = self._artifact_id(db, kind, name)
            cur = db.execute(
                "DELETE FROM aliases WHERE artifact_id = ? AND alias = ?", (art_id, alias)
            )
            if cur.rowcount == 0:
                raise NotFound(f"{kind} {name} has no alias {shown(alias)}")

    def delete(self, kind: str, name: str, version: int = 0, force: bool = False) -> None:
        """Delete one version, or every version when ``version`` is 0. The artifact row stays
        as a tombstone that keeps its numbering; blobs stay for the GC."""
        with self._tx() as db:
            art_id = self._artifact_id(db, kind, name)
            if version:
                self._require_version(db, art_id, kind, name, version)
                versions = [version]
                pointing = [
                    r[0]
                    for r in db.execute(
                        "SELECT alias FROM aliases WHERE artifact_id = ? AND version = ?"
                        " ORDER BY alias",
                        (art_id, version),
                    )
                ]
                if pointing and not force:
                    raise FailedPrecondition(
                        f"{kind} {name}@{version} is what alias(es) {', '.join(pointing)} point "
                        "to: move them first, or delete with force"
                    )
            else:
                versions = [
                    r[0]
                    for r in db.execute(
                        "SELECT version FROM versions WHERE artifact_id = ?", (art_id,)
                    )
                ]
            if kind == "model" and not force:
                self._refuse_if_base_of_adapters(db, name, versions)
            marks = ",".join("?" * len(versions))
            db.execute(
                f"DELETE FROM aliases WHERE artifact_id = ? AND version IN ({marks})",
                (art_id, *versions),
            )
            db.execute(
                f"DELETE FROM versions WHERE artifact_id = ? AND version IN ({marks})",
                (art_id, *versions),
            )
            db.execute("UPDATE artifacts SET update_time = ? WHERE id = ?", (time.time(), art_id))

    def _refuse_if_base_of_adapters(self, db, name: str, versions: list[int]) -> None:
        refs = [f"{name}@{v}" for v in versions]
        marks = ",".join("?" * len(refs))
        row = db.execute(
            "SELECT a.name, v.version, v.base_model FROM versions v JOIN artifacts a"
            f" ON a.id = v.artifact_id WHERE a.kind = 'adapter' AND v.base_model IN ({marks})"
            " ORDER BY a.name, v.version LIMIT 1",
            refs,
        ).fetchone()
        if row:
            raise FailedPrecondition(
                f"model {row[2]} is the base model of adapter {row[0]}@{row[1]}: delete the "
                "adapters first, or delete with force"
            )

    # --- reads --------------------------------------------------------------------------

    def get_artifact(self, kind: str, name: str) -> ArtifactRow:
        with self._lock:
            return self._artifact(self._db, self._artifact_id(self._db, kind, name))

    def list_artifacts(
        self,
        kind: str | None,
        after: tuple[str, str] | None,
        limit: int,
        labels: Mapping[str, str] | None = None,
    ) -> list[ArtifactRow]:
        """Live artifacts past ``after`` in (kind, name) order; with ``labels``, only those
        whose latest version carries every pair."""
        where: list[str] = []
        args: list[object] = []
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if after:
            where.append("(kind, name) > (?, ?)")
            args.extend(after)
        # Tombstones (every version deleted) are not artifacts to a reader.
        where.append("EXISTS (SELECT 1 FROM versions v WHERE v.artifact_id = artifacts.id)")
        # In the query, not on the page: a filter applied after LIMIT would return short
        # pages, or empty ones with a next token.
        for key, value in sorted((labels or {}).items()):
            where.append(
                "EXISTS (SELECT 1 FROM version_labels l WHERE l.artifact_id = artifacts.id"
                " AND l.key = ? AND l.value = ? AND l.version = (SELECT max(v.version)"
                " FROM versions v WHERE v.artifact_id = artifacts.id))"
            )
            args.extend((key, value))
        sql = "SELECT id FROM artifacts WHERE " + " AND ".join(where)
        sql += " ORDER BY kind, name LIMIT ?"
        with self._lock:
            ids = [r[0] for r in self._db.execute(sql, (*args, limit))]
            return [self._artifact(self._db, i) for i in ids]

    def resolve(self, kind: str, ref: Ref) -> VersionRow:
        with self._lock:
            db = self._db
            art_id = self._artifact_id(db, kind, ref.name)
            version = ref.version
            if ref.alias:
                row = db.execute(
                    "SELECT version FROM aliases WHERE artifact_id = ? AND alias = ?",
                    (art_id, ref.alias),
                ).fetchone()
                if row is None:
                    raise NotFound(f"{kind} {ref.name} has no version or alias {shown(ref.alias)}")
                version = row[0]
            elif not version:
                version = db.execute(
                    "SELECT max(version) FROM versions WHERE artifact_id = ?", (art_id,)
                ).fetchone()[0]
            self._require_version(db, art_id, kind, ref.name, version)
            return self._version(db, art_id, kind, ref.name, version)

    def list_versions(self, kind: str, name: str) -> list[VersionRow]:
        with self._lock:
            art_id = self._artifact_id(self._db, kind, name)
            numbers = [
                r[0]
                for r in self._db.execute(
                    "SELECT version FROM versions WHERE artifact_id = ? ORDER BY version DESC",
                    (art_id,),
                )
            ]
            return [self._version(self._db, art_id, kind, name, v) for v in numbers]

    def evaluations(
        self, model: str, model_kind: str, eval_set: str, graders_sha256: str = ""
    ) -> list[VersionRow]:
        """Evaluations of ``model`` (``name@version`` of kind ``model_kind``) on ``eval_set``
        (``name@version``), newest first; only those with ``graders_sha256`` when given."""
        # info_json is the EvaluationInfo as protobuf JSON (camelCase, enum names).
        sql = (
            "SELECT a.id, a.name, v.version FROM versions v JOIN artifacts a"
            " ON a.id = v.artifact_id WHERE a.kind = 'evaluation'"
            " AND json_extract(v.info_json, '$.evaluation.model') = ?"
            " AND json_extract(v.info_json, '$.evaluation.modelKind') = ?"
            " AND json_extract(v.info_json, '$.evaluation.evalSet') = ?"
        )
        args = [model, f"ARTIFACT_KIND_{model_kind.upper()}", eval_set]
        if graders_sha256:
            sql += " AND json_extract(v.info_json, '$.evaluation.gradersSha256') = ?"
            args.append(graders_sha256)
        sql += " ORDER BY v.create_time DESC, a.name, v.version DESC"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
            return [self._version(self._db, r[0], "evaluation", r[1], r[2]) for r in rows]

    def referenced_keys(self) -> tuple[set[str], set[str]]:
        """sha256 of every file and every manifest some version refers to (for the GC)."""
        with self._lock:
            files = {r[0] for r in self._db.execute("SELECT DISTINCT sha256 FROM files")}
            manifests = {
                r[0] for r in self._db.execute("SELECT DISTINCT manifest_sha256 FROM versions")
            }
        return files, manifests

    # --- helpers (caller holds the lock) -------------------------------------------------

    @staticmethod
    def _artifact_id(db, kind: str, name: str) -> int:
        """The id of a live artifact (one with a version): a tombstone is not found."""
        row = db.execute(
            "SELECT id, EXISTS (SELECT 1 FROM versions v WHERE v.artifact_id = artifacts.id)"
            " FROM artifacts WHERE kind = ? AND name = ?",
            (kind, name),
        ).fetchone()
        if row is None:
            raise NotFound(f"no {kind} named {shown(name)}", code=f"{kind}_not_found")
        if not row[1]:
            raise NotFound(
                f"{kind} {shown(name)} was deleted (every version)", code=f"{kind}_not_found"
            )
        return row[0]

    @staticmethod
    def _require_version(db, art_id: int, kind: str, name: str, version: int) -> None:
        row = db.execute(
            "SELECT next_version, EXISTS (SELECT 1 FROM versions WHERE artifact_id = ?"
            " AND version = ?) FROM artifacts WHERE id = ?",
            (art_id, version, art_id),
        ).fetchone()
        if row[1]:
            return
        if version < row[0]:  # numbered once, so it existed
            raise NotFound(f"{kind} {name}@{version} was deleted", code=f"{kind}_not_found")
        raise NotFound(f"{kind} {name} has no version {version}", code=f"{kind}_not_found")

    @staticmethod
    def _artifact(db, art_id: int) -> ArtifactRow:
        a = db.execute("SELECT * FROM artifacts WHERE id = ?", (art_id,)).fetchone()
        latest = db.execute(
            "SELECT max(version) FROM versions WHERE artifact_id = ?", (art_id,)
        ).fetchone()[0]
        aliases = dict(
            db.execute(
                "SELECT alias, version FROM aliases WHERE artifact_id = ? ORDER BY alias", (art_id,)
            ).fetchall()
        )
        return ArtifactRow(
            a["kind"], a["name"], latest or 0, aliases, a["create_time"], a["update_time"]
        )

    @staticmethod
    def _version(db, art_id: int, kind: str, name: str, version: int) -> VersionRow:
        v = db.execute(
            "SELECT * FROM versions WHERE artifact_id = ? AND version = ?", (art_id, version)
        ).fetchone()
        files = [
            FileRow(r["path"], r["size"], r["sha256"])
            for r in db.execute(
                "SELECT path, size, sha256 FROM files WHERE artifact_id = ? AND version = ?"
                " ORDER BY position",
                (art_id, version),
            )
        ]
        aliases = [
            r[0]
            for r in db.execute(
                "SELECT alias FROM aliases WHERE artifact_id = ? AND version = ? ORDER BY alias",
                (art_id, version),
            )
        ]
        labels = dict(
            db.execute(
                "SELECT key, value FROM version_labels WHERE artifact_id = ? AND version = ?"
                " ORDER BY key",
                (art_id, version),
            ).fetchall()
        )
        return VersionRow(
            kind,
            name,
            version,
            v["manifest_sha256"],
            v["total_size"],
            v["description"],
            v["lineage_json"],
            v["info_json"],
            v["base_model"],
            v["create_time"],
            files,
            aliases,
            labels,
        )
