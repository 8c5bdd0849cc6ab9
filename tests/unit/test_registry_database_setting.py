"""TUNEPLEX_REGISTRY_DATABASE_URL: one setting picks PostgreSQL over the SQLite file; a value
that is not a PostgreSQL URL, or one given beside DB_PATH, is refused at startup with the
variable named and the value (a secret) never echoed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from services.registry.main import open_metadata
from services.registry.metadata_postgres import describe
from services.registry.settings import RegistrySettings

SECRET_URL = "postgresql://tuneplex:hunter2-secret@db.internal:6543/registry"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("TUNEPLEX_REGISTRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TUNEPLEX_HOME", str(tmp_path))


def test_unset_means_the_sqlite_file(tmp_path):
    settings = RegistrySettings()
    assert settings.database_url is None
    store = open_metadata(settings)
    try:
        assert store.description == "sqlite registry.db"
        assert (tmp_path / "registry" / "registry.db").exists()
    finally:
        store.close()


def test_postgres_url_is_taken_and_kept_secret(monkeypatch):
    monkeypatch.setenv("TUNEPLEX_REGISTRY_DATABASE_URL", SECRET_URL)
    settings = RegistrySettings()
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == SECRET_URL
    assert "hunter2" not in repr(settings)
    assert describe(SECRET_URL) == "postgresql db.internal:6543/registry"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"TUNEPLEX_REGISTRY_DATABASE_URL": "mysql://u:hunter2-secret@h/db"}, "postgresql://"),
        # psycopg's own message would quote the token, password included.
        ({"TUNEPLEX_REGISTRY_DATABASE_URL": "postgresql://tuneplex:hunter2%ZZ@db/x"}, "parsed"),
        (
            {
                "TUNEPLEX_REGISTRY_DATABASE_URL": SECRET_URL,
                "TUNEPLEX_REGISTRY_DB_PATH": "/tmp/registry.db",
            },
            "not both",
        ),
    ],
)
def test_bad_values_are_refused_without_echoing_them(monkeypatch, env, says):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=says):
        RegistrySettings()
    # What an operator sees: one line naming the variable, exit status 2, no secret.
    run = subprocess.run(
        [sys.executable, "-m", "services.registry"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert run.returncode == 2
    assert "TUNEPLEX_REGISTRY_DATABASE_URL" in run.stderr and says in run.stderr
    assert "hunter2" not in run.stderr + run.stdout
