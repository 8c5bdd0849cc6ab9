"""The registry's and the trainer's ``/metrics``, scraped from real processes on loopback after
one RPC each, as Prometheus would; and a taken metrics port refused like a bad setting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from tests.helpers.registry_process import start_registry
from tests.helpers.trainer_process import start_trainer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def handled(body: str, method: str, code: str = "OK") -> float:
    """The value of ``grpc_server_handled_total`` for one method and status code."""
    prefix = f'grpc_server_handled_total{{code="{code}",method="{method}"}} '
    values = [float(line[len(prefix) :]) for line in body.splitlines() if line.startswith(prefix)]
    assert len(values) == 1, f"no {prefix.strip()} in:\n{body[:3000]}"
    return values[0]


def test_registry_and_trainer_count_their_rpcs(tmp_path):
    registry_metrics, trainer_metrics = free_port(), free_port()
    registry = start_registry(
        tmp_path / "registry", env={"TUNEPLEX_REGISTRY_METRICS_PORT": str(registry_metrics)}
    )
    try:
        with RegistryClient(registry.target, timeout=30) as client:
            assert client.list() == []
        body = scrape(registry_metrics)
        assert handled(body, "/tuneplex.registry.v1.RegistryService/ListArtifacts") == 1.0
        assert "grpc_server_handling_seconds_bucket" in body

        trainer = start_trainer(
            tmp_path / "trainer",
            registry.target,
            env={"TUNEPLEX_TRAINER_METRICS_PORT": str(trainer_metrics)},
        )
        try:
            with TrainerClient(trainer.target, timeout=30) as client:
                client.list_jobs()
            body = scrape(trainer_metrics)
            assert handled(body, "/tuneplex.trainer.v1.TrainerService/ListJobs") == 1.0
        finally:
            trainer.stop()
    finally:
        registry.stop()


def test_a_taken_metrics_port_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEPLEX_")}
        env.update(
            TUNEPLEX_HOME=str(tmp_path),
            TUNEPLEX_REGISTRY_PORT=str(free_port()),
            TUNEPLEX_REGISTRY_METRICS_PORT=str(port),
        )
        done = subprocess.run(
            [sys.executable, "-m", "services.registry"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("registry: invalid settings: TUNEPLEX_REGISTRY_METRICS_PORT: ")
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in done.stderr
