"""The real registry as a subprocess on a loopback port, for tests of every tier.

Used by the ``registry_server`` / ``registry_with_base_model`` fixtures in conftest.py and by
the registry's own fault tests, which kill and restart it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
STARTUP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RegistryServer:
    """A running registry: ``target`` is ``127.0.0.1:PORT``, ``home`` its data directory,
    ``api_key`` the key clients must send (None: none), ``process`` the subprocess."""

    target: str
    home: Path
    api_key: str | None
    process: subprocess.Popen
    env: dict[str, str] = field(repr=False)
    log_path: Path = field(repr=False)
    base_model: str | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Start it again on the same port, home and settings, and wait until it serves."""
        self.stop()
        self.process = _spawn(self.env, self.log_path)
        wait_until_serving(self)


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [python, "-m", "services.registry"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def wait_until_serving(server: RegistryServer, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"registry exited with {server.process.returncode}:\n{server.log()[-3000:]}"
                )
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                server.kill()
                raise TimeoutError(
                    f"registry not SERVING after {timeout}s:\n{server.log()[-3000:]}"
                )
            time.sleep(0.1)


def start_registry(
    home: Path, *, api_key: str | None = None, env: dict[str, str] | None = None
) -> RegistryServer:
    """Start ``python -m services.registry`` with data in ``home`` on a free loopback port.
    ``env`` adds settings, e.g. ``{"TUNEPLEX_REGISTRY_STORAGE": "s3", ...}``."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEPLEX_REGISTRY_")}
    full_env.update(
        TUNEPLEX_HOME=str(home),
        TUNEPLEX_REGISTRY_HOST="127.0.0.1",
        TUNEPLEX_REGISTRY_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    if api_key:
        full_env["TUNEPLEX_REGISTRY_API_KEY"] = api_key
    full_env.update(env or {})
    log_path = home / "registry.log"
    server = RegistryServer(
        target=f"127.0.0.1:{port}",
        home=home,
        api_key=api_key,
        process=_spawn(full_env, log_path),
        env=full_env,
        log_path=log_path,
    )
    wait_until_serving(server)
    return server


@dataclass
class MotoS3:
    """moto's S3 server mode on a loopback port: a real S3-compatible HTTP endpoint."""

    endpoint: str
    process: subprocess.Popen
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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_moto_s3(log_path: Path | None = None) -> MotoS3:
    port = _free_port()
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )
    if log_path:
        out.close()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError("moto server did not start") from None
            time.sleep(0.1)
    return MotoS3(f"127.0.0.1:{port}", process)
