"""Metadata of artifacts, versions, aliases and files, in SQLite or PostgreSQL.

One store, one set of SQL, over a ``MetadataDatabase`` (metadata_database.py): SQLite
(metadata_sqlite.py) is the embedded default, PostgreSQL (metadata_postgres.py) the backend of
several registry replicas. Every write is one transaction: a version appears with all its file
rows or not at all, its number taken from its artifact row in the same statement that locks
it; an alias moves in one statement. Versions are immutable: a trigger refuses any UPDATE of
a version row.

Version numbers are never reused: deleting versions, even the last one, keeps the artifact row
with its ``next_version`` as a tombstone, so ``name@3`` in a lineage can never come to mean
other bytes. A tombstone (a row with no versions left) reads as not found ("was deleted") and
is not listed; the next push of its name continues its numbering.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import Aborted, FailedPrecondition, NotFound, shown
from services.registry.metadata_database import Dialect, MetadataDatabase, Session
from services.registry.metadata_sqlite import SqliteDatabase
from services.registry.names import Ref
from services.registry.stored_text import (
    CONTROL_IN_PROSE,
    NUL,
    refuse_characters,
    refuse_nul_in_json,
)


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


def _refuse_unstorable(new: NewVersion) -> None:
    """Text neither backend may be handed (stored_text.py): refused before the transaction."""
    refuse_characters(
        new.description, "the description", param="description", refused=CONTROL_IN_PROSE
    )
    for key, value in new.labels.items():
        refuse_characters(key, "a label's key", param="labels", refused=NUL)
        refuse_characters(value, f"label {shown(key)}", param="labels", refused=NUL)
    refuse_characters(new.base_model, "the base model", param="base_model", refused=NUL)
    refuse_nul_in_json(new.lineage_json, "the lineage", param="lineage")
    refuse_nul_in_json(new.info_json, "the version's info (read from its files)", param="files")


class MetadataStore:
    def __init__(self, database: MetadataDatabase | Path):
        """``database``: an open backend, or the path of a SQLite file (the default one)."""
        self._database = SqliteDatabase(database) if isinstance(database, Path) else database
        self._dialect: Dialect = self._database.dialect

    @property
    def description(self) -> str:
        return self._database.description

    def close(self) -> None:
        self._database.close()

    # --- writes -------------------------------------------------------------------------

    def publish(self, new: NewVersion) -> VersionRow:
        """Add the next version of ``new.kind/new.name`` (creating the artifact), with its files."""
        _refuse_unstorable(new)
        now = time.time()
        with self._database.write() as db:
            # One statement takes the number and, on PostgreSQL, the artifact row's lock until
            # commit: a concurrent push of the name (on any replica) waits, then takes the
            # next.
            art_id, version = db.execute(
                "INSERT INTO artifacts (kind, name, next_version, create_time, update_time)"
                " VALUES (?, ?, 2, ?, ?) ON CONFLICT (kind, name) DO UPDATE"
                " SET next_version = artifacts.next_version + 1,"
                " update_time = excluded.update_time"
                " RETURNING id, next_version - 1",
                (new.kind, new.name, now, now),
            ).fetchone()
            # A tombstone revived by this push is a new artifact to its readers: it gets a new
            # create_time, and keeps only its numbering. Asked in a statement of its own, once
            # the lock is held: on PostgreSQL a statement that waited for the lock still reads
            # the database as it was when it began, before the push or delete it waited on
            # committed (and would take a concurrent first push's artifact for a tombstone).
            db.execute(
                "UPDATE artifacts SET create_time = ? WHERE id = ?"
                " AND NOT EXISTS (SELECT 1 FROM versions WHERE artifact_id = ?)",
                (now, art_id, art_id),
            )
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
        with self._database.write() as db:
            art_id = self._artifact_id(db, kind, name, lock=True)
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
        with self._database.write() as db:
            art_id = self._artifact_id(db, kind, name, lock=True)
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
        with self._database.write() as db:
            art_id = self._artifact_id(db, kind, name, lock=True)
            cur = db.execute(
                "DELETE FROM aliases WHERE artifact_id = ? AND alias = ?", (art_id, alias)
            )
            if cur.rowcount == 0:
                raise NotFound(f"{kind} {name} has no alias {shown(alias)}")

    def delete(self, kind: str, name: str, version: int = 0, force: bool = False) -> None:
        """Delete one version, or every version when ``version`` is 0. The artifact row stays
        as a tombstone that keeps its numbering; blobs stay for the GC."""
        with self._database.write() as db:
            art_id = self._artifact_id(db, kind, name, lock=True)
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
                if not versions:  # _artifact_id saw it live; never an empty IN () below
                    raise NotFound(
                        f"{kind} {shown(name)} was deleted (every version)",
                        code=f"{kind}_not_found",
                    )
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

    def _refuse_if_base_of_adapters(self, db: Session, name: str, versions: list[int]) -> None:
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
        with self._database.read() as db:
            return self._artifact(db, self._artifact_id(db, kind, name))

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
        with self._database.read() as db:
            ids = [r[0] for r in db.execute(sql, (*args, limit))]
            return [self._artifact(db, i) for i in ids]

    def resolve(self, kind: str, ref: Ref) -> VersionRow:
        with self._database.read() as db:
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
        with self._database.read() as db:
            art_id = self._artifact_id(db, kind, name)
            numbers = [
                r[0]
                for r in db.execute(
                    "SELECT version FROM versions WHERE artifact_id = ? ORDER BY version DESC",
                    (art_id,),
                )
            ]
            return [self._version(db, art_id, kind, name, v) for v in numbers]

    def evaluations(
        self, model: str, model_kind: str, eval_set: str, graders_sha256: str = ""
    ) -> list[VersionRow]:
        """Evaluations of ``model`` (``name@version`` of kind ``model_kind``) on ``eval_set``
        (``name@version``), newest first; only those with ``graders_sha256`` when given."""
        # info_json is the EvaluationInfo as protobuf JSON (camelCase, enum names).
        field = self._dialect.json_text
        sql = (
            "SELECT a.id, a.name, v.version FROM versions v JOIN artifacts a"
            " ON a.id = v.artifact_id WHERE a.kind = 'evaluation'"
            f" AND {field('v.info_json', 'evaluation.model')} = ?"
            f" AND {field('v.info_json', 'evaluation.modelKind')} = ?"
            f" AND {field('v.info_json', 'evaluation.evalSet')} = ?"
        )
        args = [model, f"ARTIFACT_KIND_{model_kind.upper()}", eval_set]
        if graders_sha256:
            sql += f" AND {field('v.info_json', 'evaluation.gradersSha256')} = ?"
            args.append(graders_sha256)
        sql += " ORDER BY v.create_time DESC, a.name, v.version DESC"
        with self._database.read() as db:
            rows = db.execute(sql, args).fetchall()
            return [self._version(db, r[0], "evaluation", r[1], r[2]) for r in rows]

    def referenced_keys(self) -> tuple[set[str], set[str]]:
        """sha256 of every file and every manifest some version refers to (for the GC)."""
        with self._database.read() as db:
            files = {r[0] for r in db.execute("SELECT DISTINCT sha256 FROM files")}
            manifests = {r[0] for r in db.execute("SELECT DISTINCT manifest_sha256 FROM versions")}
        return files, manifests

    # --- helpers (inside a transaction) -------------------------------------------------

    def _artifact_id(self, db: Session, kind: str, name: str, lock: bool = False) -> int:
        """The id of a live artifact (one with a version): a tombstone is not found. With
        ``lock`` (every write but a publish), the row is this transaction's until it ends."""
        row = db.execute(
            "SELECT id FROM artifacts WHERE kind = ? AND name = ?"
            + (self._dialect.lock_row if lock else ""),
            (kind, name),
        ).fetchone()
        if row is None:
            raise NotFound(f"no {kind} named {shown(name)}", code=f"{kind}_not_found")
        # A statement of its own, after the lock: on PostgreSQL the statement that waited for
        # the lock reads the versions as they were before the write it waited on (a delete of
        # every version on another replica) committed; this one reads them as that left them.
        (live,) = db.execute(
            "SELECT EXISTS (SELECT 1 FROM versions WHERE artifact_id = ?)", (row[0],)
        ).fetchone()
        if not live:
            raise NotFound(
                f"{kind} {shown(name)} was deleted (every version)", code=f"{kind}_not_found"
            )
        return row[0]

    @staticmethod
    def _require_version(db: Session, art_id: int, kind: str, name: str, version: int) -> None:
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
    def _artifact(db: Session, art_id: int) -> ArtifactRow:
        kind, name, create_time, update_time = db.execute(
            "SELECT kind, name, create_time, update_time FROM artifacts WHERE id = ?", (art_id,)
        ).fetchone()
        latest = db.execute(
            "SELECT max(version) FROM versions WHERE artifact_id = ?", (art_id,)
        ).fetchone()[0]
        aliases = dict(
            db.execute(
                "SELECT alias, version FROM aliases WHERE artifact_id = ? ORDER BY alias", (art_id,)
            ).fetchall()
        )
        return ArtifactRow(kind, name, latest or 0, aliases, create_time, update_time)

    @staticmethod
    def _version(db: Session, art_id: int, kind: str, name: str, version: int) -> VersionRow:
        row = db.execute(
            "SELECT manifest_sha256, total_size, description, lineage_json, info_json,"
            " base_model, create_time FROM versions WHERE artifact_id = ? AND version = ?",
            (art_id, version),
        ).fetchone()
        files = [
            FileRow(*r)
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
        manifest_sha256, total_size, description, lineage_json, info_json, base_model, created = row
        return VersionRow(
            kind,
            name,
            version,
            manifest_sha256,
            total_size,
            description,
            lineage_json,
            info_json,
            base_model,
            created,
            files,
            aliases,
            labels,
        )
