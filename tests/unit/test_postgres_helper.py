"""The tests' PostgreSQL helper on a machine that cannot run a cluster: the tests that need one
are skipped with the reason (setup only warns when it cannot install the server), and a failed
initdb leaves no data directory behind."""

from __future__ import annotations

import subprocess
import tempfile

import pytest

from tests.helpers import postgres


def test_no_server_binaries_skip_with_the_fix_in_the_reason(monkeypatch):
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="make setup"):
        postgres.start_postgres()


def test_a_failed_initdb_removes_its_data_directory(monkeypatch, tmp_path):
    if postgres.server_bin_dir() is None:
        pytest.skip(postgres.NOT_INSTALLED)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def initdb_fails(argv):
        return subprocess.CompletedProcess(argv, 1, "", "initdb: could not create directory")

    monkeypatch.setattr(postgres, "_run_as_server_user", initdb_fails)
    with pytest.raises(RuntimeError, match="initdb failed"):
        postgres.start_postgres()
    assert list(tmp_path.iterdir()) == []
