"""The PostgreSQL schema of the registry as numbered migrations, applied in order, each once.

The same tables as the SQLite schema (migrations.py), at its current state: PostgreSQL
databases start here, so SQLite's step 2 (tombstones rebuilt for names deleted before they
existed) has nothing to do. What PostgreSQL spells differently:

- names, aliases and label keys compare as bytes (``COLLATE "C"``), as SQLite's BINARY does,
  so listing order and page tokens do not depend on the database's locale;
- sizes are BIGINT (SQLite's INTEGER is 64-bit already);
- the immutability of versions and their labels is a PL/pgSQL trigger function.
"""

from __future__ import annotations

# Numbered migrations, applied in order, each once. Append; never edit a published one.
# Each is one script (several statements, no parameters), run in one transaction.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE artifacts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind TEXT COLLATE "C" NOT NULL,
        name TEXT COLLATE "C" NOT NULL,
        next_version INTEGER NOT NULL DEFAULT 1,
        create_time DOUBLE PRECISION NOT NULL,
        update_time DOUBLE PRECISION NOT NULL,
        UNIQUE (kind, name)
    );
    CREATE TABLE versions (
        artifact_id BIGINT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        total_size BIGINT NOT NULL,
        description TEXT NOT NULL,
        lineage_json TEXT NOT NULL,
        info_json TEXT NOT NULL,
        base_model TEXT COLLATE "C" NOT NULL DEFAULT '',
        create_time DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (artifact_id, version)
    );
    CREATE INDEX versions_base_model ON versions(base_model) WHERE base_model <> '';
    CREATE TABLE files (
        artifact_id BIGINT NOT NULL,
        version INTEGER NOT NULL,
        position INTEGER NOT NULL,
        path TEXT NOT NULL,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (artifact_id, version, position),
        FOREIGN KEY (artifact_id, version) REFERENCES versions(artifact_id, version)
            ON DELETE CASCADE
    );
    CREATE INDEX files_sha256 ON files(sha256);
    CREATE TABLE aliases (
        artifact_id BIGINT NOT NULL,
        alias TEXT COLLATE "C" NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (artifact_id, alias),
        FOREIGN KEY (artifact_id, version) REFERENCES versions(artifact_id, version)
    );
    CREATE TABLE version_labels (
        artifact_id BIGINT NOT NULL,
        version INTEGER NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        value TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (artifact_id, version, key),
        FOREIGN KEY (artifact_id, version) REFERENCES versions(artifact_id, version)
            ON DELETE CASCADE
    );
    CREATE INDEX version_labels_pair ON version_labels(key, value);
    CREATE FUNCTION tuneplex_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'versions are immutable';
    END
    $$;
    CREATE TRIGGER versions_immutable BEFORE UPDATE ON versions
        FOR EACH ROW EXECUTE FUNCTION tuneplex_versions_immutable();
    CREATE TRIGGER version_labels_immutable BEFORE UPDATE ON version_labels
        FOR EACH ROW EXECUTE FUNCTION tuneplex_versions_immutable();
    """,
]
