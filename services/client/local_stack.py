"""Runs the tuneplex services on this machine as background processes: what `tuneplex up`,
`tuneplex demo` and `tuneplex stop` use. Each service gets a log file and a pid file under
``$TUNEPLEX_HOME/run``; nothing here is test-only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.client.config import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_REGISTRY_PORT,
    DEFAULT_TRAINER_PORT,
)
from services.common.errors import NotFound, Unavailable


@dataclass(frozen=True)
class StackPorts:
    registry: int = DEFAULT_REGISTRY_PORT
    trainer: int = DEFAULT_TRAINER_PORT
    gateway: int = DEFAULT_GATEWAY_PORT


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    pid: int
    log: Path


def run_dir(home: Path) -> Path:
    return home / "run"


def _pid_file(home: Path, name: str) -> Path:
    return run_dir(home) / f"{name}.pid"


def running_pid(home: Path, name: str) -> int | None:
    """The pid recorded for ``name`` if that process is still alive."""
    path = _pid_file(home, name)
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def start_service(home: Path, name: str, env: Mapping[str, str]) -> ServiceProcess:
    """Start ``python -m services.<name>`` detached, in its own session so that `stop` can end
    it with everything it started (vLLM engines, job workers)."""
    if pid := running_pid(home, name):
        return ServiceProcess(name, pid, run_dir(home) / f"{name}.log")
    run_dir(home).mkdir(parents=True, exist_ok=True)
    log = run_dir(home) / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env={**os.environ, "TUNEPLEX_HOME": str(home), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _pid_file(home, name).write_text(str(proc.pid))
    return ServiceProcess(name, proc.pid, log)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def wait_grpc_healthy(proc: ServiceProcess, target: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            _ensure_alive(proc)
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise Unavailable(
        f"{proc.name} did not become healthy in {timeout:.0f}s; log {proc.log}:\n" + _tail(proc.log)
    )


def wait_http_healthy(proc: ServiceProcess, url: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _ensure_alive(proc)
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise Unavailable(
        f"{proc.name} did not become healthy in {timeout:.0f}s; log {proc.log}:\n" + _tail(proc.log)
    )


def _ensure_alive(proc: ServiceProcess) -> None:
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:  # not our child (started by an earlier command): probe it
        try:
            os.kill(proc.pid, 0)
            return
        except ProcessLookupError:
            pid, status = proc.pid, 0
    if pid:
        raise Unavailable(
            f"{proc.name} exited (status {status}); log {proc.log}:\n" + _tail(proc.log)
        )


def stop_services(home: Path, names: list[str], timeout: float = 20.0) -> list[str]:
    """SIGTERM each service's process group, SIGKILL what is left after ``timeout``."""
    stopped = []
    for name in names:
        pid = running_pid(home, name)
        if pid is None:
            _pid_file(home, name).unlink(missing_ok=True)
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and running_pid(home, name):
            time.sleep(0.2)
        if running_pid(home, name):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _pid_file(home, name).unlink(missing_ok=True)
        stopped.append(name)
    return stopped


def start_all(
    home: Path,
    ports: StackPorts,
    *,
    base_model: str,
    max_lora_rank: int = 16,
    say: Callable[[str], None] = lambda msg: None,
) -> None:
    """Start registry, trainer and gateway with the embedded defaults (local store, SQLite).

    The registry comes first, with the base model imported and pushed, since the others resolve
    through it; the gateway returns at once and loads vLLM in the background (`wait_http_healthy`
    on its /health tells when it serves)."""
    from services.client.model_import import import_model
    from services.client.registry import RegistryClient

    registry = f"127.0.0.1:{ports.registry}"
    proc = start_service(home, "registry", {"TUNEPLEX_REGISTRY_PORT": str(ports.registry)})
    wait_grpc_healthy(proc, registry)
    say(f"registry on {registry}")
    model_dir = import_model(base_model, home=home, progress=say).path
    with RegistryClient(registry) as client:
        try:
            client.resolve("model", base_model)
        except NotFound:
            say(f"pushing {base_model} to the registry")
            client.push("model", base_model, model_dir, source=base_model)
    trainer = f"127.0.0.1:{ports.trainer}"
    proc = start_service(
        home,
        "trainer",
        {
            "TUNEPLEX_TRAINER_PORT": str(ports.trainer),
            "TUNEPLEX_TRAINER_REGISTRY_TARGET": registry,
            # Eval jobs send their items through the gateway started below.
            "TUNEPLEX_TRAINER_GATEWAY_URL": f"http://127.0.0.1:{ports.gateway}",
        },
    )
    wait_grpc_healthy(proc, trainer)
    say(f"trainer on {trainer}")
    start_service(
        home,
        "gateway",
        {
            "TUNEPLEX_GATEWAY_PORT": str(ports.gateway),
            "TUNEPLEX_GATEWAY_REGISTRY_TARGET": registry,
            "TUNEPLEX_GATEWAY_BASE_MODELS": json.dumps([base_model]),
            "TUNEPLEX_GATEWAY_MAX_LORA_RANK": str(max_lora_rank),
        },
    )
    say(f"gateway starting on http://127.0.0.1:{ports.gateway} (vLLM loads in the background)")
