"""A throwaway PostgreSQL cluster for tests: the distribution's server binaries (Debian's and
Ubuntu's ``postgresql`` package, which ``make setup`` installs where it can), initdb into a fresh
directory, the server on a Unix socket in that directory only (no TCP port to collide on),
stopped and removed at the end. Without the binaries the tests that need a cluster are skipped,
with the reason, rather than failed: setup only warns when it cannot install them.

initdb and the server refuse to run as root: as root they run as the ``postgres`` system user
(through ``runuser``), in a directory that user owns; as anyone else, as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.client.processes import free_port

SERVER_USER = "postgres"  # the role initdb creates; connections use it, trusted on the socket
START_TIMEOUT_S = 60


NOT_INSTALLED = (
    "PostgreSQL server binaries not found (initdb, pg_ctl): run `make setup`, which installs "
    "the distribution's postgresql package (apt-get), or install it yourself"
)


def server_bin_dir() -> Path | None:
    """The newest installed server's bin/ (initdb, pg_ctl); None when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major, reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    return None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _major(path: str) -> int:
    version = Path(path).parents[1].name
    return int(version) if version.isdigit() else 0


def _run_as_server_user(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", SERVER_USER, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S)


@dataclass
class PostgresCluster:
    data_dir: Path
    port: int
    bin_dir: Path

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL that reaches the socket (the registry's TUNEPLEX_REGISTRY_DATABASE_URL)."""
        return f"postgresql://{SERVER_USER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _run_as_server_user(
            [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast"]
        )
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_postgres() -> PostgresCluster:
    """initdb and start a cluster; the caller stops it (``PostgresCluster.stop``). Skips the
    calling test (``pytest.skip``) where no server is installed."""
    bin_dir = server_bin_dir()
    if bin_dir is None:
        pytest.skip(NOT_INSTALLED)
    if os.geteuid() == 0 and not _user_exists(SERVER_USER):
        pytest.skip(f"running as root, and there is no {SERVER_USER!r} user to run the server as")
    # Not pytest's tmp_path: that is private to the test user (0700), and the server user
    # must own its directory.
    data_dir = Path(tempfile.mkdtemp(prefix="tuneplex-pg-"))
    cluster = PostgresCluster(data_dir, free_port(), bin_dir)
    try:
        if os.geteuid() == 0:
            shutil.chown(data_dir, SERVER_USER, SERVER_USER)
        init = _run_as_server_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                f"--username={SERVER_USER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ]
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
    except BaseException:  # a half-made data directory is of no use to anyone: remove it
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    # Throwaway data: no durability, so the tests do not wait on fsync of a 2-core machine.
    options = (
        f"-k {data_dir} -p {cluster.port} -c listen_addresses='' -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
    )
    start = _run_as_server_user(
        [
            str(bin_dir / "pg_ctl"),
            "start",
            "-D",
            str(data_dir),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-l",
            str(data_dir / "server.log"),
            "-o",
            options,
        ]
    )
    if start.returncode != 0:
        log = (data_dir / "server.log").read_text(errors="replace")[-4000:]
        cluster.stop()
        raise RuntimeError(f"pg_ctl start failed: {start.stdout}{start.stderr}\n{log}")
    return cluster
