"""The real trainer service as a subprocess on a loopback port, for integration tests: it can
be SIGKILLed and restarted on the same port and home, as a crash would. Spawning and waiting
are ``tests/helpers/service_process.py`` over the product's ``services/client/processes.py``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from services.client.processes import wait_grpc_healthy
from tests.helpers.service_process import ServiceUnderTest, free_port, service_env

STARTUP_TIMEOUT_S = 90.0


@dataclass(kw_only=True)
class TrainerServer(ServiceUnderTest):
    target: str

    def start(self) -> None:
        """Start it (again: same port, home and settings) and wait until it serves."""
        process = self.spawn()
        self.killed_if_it_fails(lambda: wait_grpc_healthy(process, self.target, STARTUP_TIMEOUT_S))


def start_trainer(
    home: Path, registry_target: str, env: dict[str, str] | None = None
) -> TrainerServer:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "REGISTRY_TARGET": registry_target,
    }
    server = TrainerServer(
        name="trainer",
        target=f"127.0.0.1:{port}",
        home=home,
        env=service_env("trainer", home, settings, env),
        log_path=home / "trainer.log",
    )
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
