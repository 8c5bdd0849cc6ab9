"""The SQLite schema of the registry as numbered migrations, applied in order, each once."""

from __future__ import annotations

import sqlite3

# Numbered migrations, applied in order, each once. Append; never edit a published one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        next_version INTEGER NOT NULL DEFAULT 1,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL,
        UNIQUE (kind, name)
    );
    CREATE TABLE versions (
        artifact_id INTEGER NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        total_size INTEGER NOT NULL,
        description TEXT NOT NULL,
        lineage_json TEXT NOT NULL,
        info_json TEXT NOT NULL,
        base_model TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL,
        PRIMARY KEY (artifact_id, version)
    );
    CREATE INDEX versions_base_model ON versions(base_model) WHERE base_model != '';
    CREATE TABLE files (
        artifact_id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        position INTEGER NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (artifact_id, version, position),
        FOREIGN KEY (artifact_id, version) REFERENCES versions(artifact_id, version)
            ON DELETE CASCADE
    );
    CREATE INDEX files_sha256 ON files(sha256);
    CREATE TABLE aliases (
        artifact_id INTEGER NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (artifact_id, alias),
        FOREIGN KEY (artifact_id, version) REFERENCES versions(artifact_id, version)
    );
    CREATE TRIGGER versions_immutable BEFORE UPDATE ON versions
    BEGIN SELECT RAISE(ABORT, 'versions are immutable'); END;
    """,
]


def split_statements(script: str) -> list[str]:
    """Statements of a migration; a trigger body's inner ';' stays with its trigger."""
    out, buf = [], ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
