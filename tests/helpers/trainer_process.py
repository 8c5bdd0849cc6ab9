"""The real trainer service as a subprocess on a loopback port, for integration tests: it can
be SIGKILLed and restarted on the same port and home, as a crash would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.registry_process import REPO, VENV_PYTHON, _free_port

STARTUP_TIMEOUT_S = 90.0


@dataclass
class TrainerServer:
    target: str
    home: Path
    process: subprocess.Popen
    env: dict[str, str] = field(repr=False)
    log_path: Path = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def start(self) -> None:
        self.process = _spawn(self.env, self.log_path)
        _wait_until_serving(self)


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [python, "-m", "services.trainer"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def _wait_until_serving(server: TrainerServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"trainer exited:\n{server.log()[-3000:]}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                server.kill()
                raise TimeoutError(f"trainer not SERVING:\n{server.log()[-3000:]}")
            time.sleep(0.2)


def start_trainer(
    home: Path, registry_target: str, env: dict[str, str] | None = None
) -> TrainerServer:
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEPLEX_TRAINER_")}
    full_env.update(
        TUNEPLEX_HOME=str(home),
        TUNEPLEX_TRAINER_PORT=str(port),
        TUNEPLEX_TRAINER_REGISTRY_TARGET=registry_target,
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    server = TrainerServer(f"127.0.0.1:{port}", home, None, full_env, home / "trainer.log")  # type: ignore[arg-type]
    server.start()
    return server


def wait_for_final(client, job_id: str, timeout: float):
    """The job once it reaches a final state; AssertionError after ``timeout`` seconds."""
    from services.client.trainer import FINAL_STATES

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.state in FINAL_STATES:
            return job
        time.sleep(0.25)
    raise AssertionError(f"{job_id} not final after {timeout}s: {client.get_job(job_id)}")
