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
    # 2: version numbers are never reused. Deleting an artifact's last version used to delete
    # its row and numbering; from now on the row stays as a tombstone. For a name deleted
    # before, a tombstone is rebuilt from the versions that still name it (lineage, base
    # models, evaluated models), numbered past the highest version they name, so a new push
    # cannot take a number that a lineage already pins.
    """
    WITH refs (kind, ref) AS (
        SELECT 'dataset', json_extract(lineage_json, '$.dataset') FROM versions
        UNION ALL SELECT 'dataset', json_extract(lineage_json, '$.validationDataset')
            FROM versions
        UNION ALL SELECT 'dataset', json_extract(lineage_json, '$.evalSet') FROM versions
        UNION ALL SELECT 'dataset', j.value
            FROM versions, json_each(versions.lineage_json, '$.databases') AS j
        UNION ALL SELECT 'model', json_extract(lineage_json, '$.baseModel') FROM versions
        UNION ALL SELECT 'adapter', json_extract(lineage_json, '$.adapter') FROM versions
        UNION ALL SELECT 'model', base_model FROM versions
        UNION ALL SELECT
            CASE json_extract(info_json, '$.evaluation.modelKind')
                WHEN 'ARTIFACT_KIND_ADAPTER' THEN 'adapter' ELSE 'model' END,
            json_extract(info_json, '$.evaluation.model')
            FROM versions
    ),
    pinned (kind, name, number) AS (
        SELECT kind, substr(ref, 1, instr(ref, '@') - 1), substr(ref, instr(ref, '@') + 1)
        FROM refs WHERE instr(ref, '@') > 1
    )
    INSERT INTO artifacts (kind, name, next_version, create_time, update_time)
    SELECT kind, name, max(CAST(number AS INTEGER)) + 1,
        CAST(strftime('%s', 'now') AS REAL), CAST(strftime('%s', 'now') AS REAL)
    FROM pinned WHERE number != '' AND number NOT GLOB '*[^0-9]*'
    GROUP BY kind, name
    ON CONFLICT (kind, name) DO UPDATE SET next_version = max(next_version, excluded.next_version);
    """,
    # 3: labels of a version (services/common/labels.py), given at upload and as immutable as
    # the version. A table rather than a JSON column: ListArtifacts filters on pairs in SQL,
    # before the page is cut, through the (key, value) index.
    """
    CREATE TABLE version_labels (
        artifact_id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (artifact_id, version, key),
        FOREIGN KEY (artifact_id, version) REFERENCES versions(artifact_id, version)
            ON DELETE CASCADE
    );
    CREATE INDEX version_labels_pair ON version_labels(key, value);
    CREATE TRIGGER version_labels_immutable BEFORE UPDATE ON version_labels
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
