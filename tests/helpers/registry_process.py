"""The real registry as a subprocess on a loopback port, for tests of every tier.

Used by the ``registry_server`` / ``registry_with_base_model`` fixtures in conftest.py and by
the registry's own fault tests, which kill and restart it. Spawning and waiting are
``tests/helpers/service_process.py`` over the product's ``services/client/processes.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.client.processes import (
    ServiceProcess,
    spawn,
    wait_grpc_healthy,
    wait_port_open,
)
from tests.helpers.service_process import (
    REPO,
    VENV_PYTHON,
    ServiceUnderTest,
    free_port,
    python,
    service_env,
)

__all__ = [
    "REPO",
    "VENV_PYTHON",
    "MotoS3",
    "RegistryServer",
    "free_port",
    "start_moto_s3",
    "start_registry",
    "wait_until_serving",
]
STARTUP_TIMEOUT_S = 60.0


@dataclass(kw_only=True)
class RegistryServer(ServiceUnderTest):
    """A running registry: ``target`` is ``127.0.0.1:PORT``, ``home`` its data directory,
    ``api_key`` the key clients must send (None: none), ``process`` its process."""

    target: str
    api_key: str | None = None
    base_model: str | None = None

    def restart(self) -> None:
        """Start it again on the same port, home and settings, and wait until it serves."""
        self.stop()
        self.spawn()
        wait_until_serving(self)


def wait_until_serving(server: RegistryServer, timeout: float = STARTUP_TIMEOUT_S) -> None:
    assert server.process is not None
    process = server.process
    server.killed_if_it_fails(lambda: wait_grpc_healthy(process, server.target, timeout))


def start_registry(
    home: Path, *, api_key: str | None = None, env: dict[str, str] | None = None
) -> RegistryServer:
    """Start ``python -m services.registry`` with data in ``home`` on a free loopback port.
    ``env`` adds settings, e.g. ``{"TUNEPLEX_REGISTRY_STORAGE": "s3", ...}``."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {"HOST": "127.0.0.1", "PORT": str(port), "METRICS_PORT": str(free_port())}
    if api_key:
        settings["API_KEY"] = api_key
    server = RegistryServer(
        name="registry",
        target=f"127.0.0.1:{port}",
        home=home,
        api_key=api_key,
        env=service_env("registry", home, settings, env),
        log_path=home / "registry.log",
    )
    server.spawn()
    wait_until_serving(server)
    return server


@dataclass
class MotoS3:
    """moto's S3 server mode on a loopback port: a real S3-compatible HTTP endpoint."""

    endpoint: str
    process: ServiceProcess
    access_key: str = "testing"
    secret_key: str = "testing"

    def registry_env(self, bucket: str) -> dict[str, str]:
        return {
            "TUNEPLEX_REGISTRY_STORAGE": "s3",
            "TUNEPLEX_REGISTRY_S3_ENDPOINT": self.endpoint,
            "TUNEPLEX_REGISTRY_S3_BUCKET": bucket,
            "TUNEPLEX_REGISTRY_S3_ACCESS_KEY": self.access_key,
            "TUNEPLEX_REGISTRY_S3_SECRET_KEY": self.secret_key,
            "TUNEPLEX_REGISTRY_S3_REGION": "us-east-1",
        }

    def minio(self):
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region="us-east-1",
        )

    def stop(self) -> None:
        self.process.stop(10.0)


def start_moto_s3(log_path: Path | None = None) -> MotoS3:
    port = free_port()
    log = log_path or Path(os.devnull)
    process = spawn(
        "moto server",
        [python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        log,
    )
    try:
        wait_port_open(process, "127.0.0.1", port, STARTUP_TIMEOUT_S)
    except BaseException:
        process.kill()
        raise
    return MotoS3(f"127.0.0.1:{port}", process)
