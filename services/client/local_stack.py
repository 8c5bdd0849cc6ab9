"""Runs the tuneplex services on this machine as background processes: what `tuneplex up`,
`tuneplex demo` and `tuneplex stop` use. Each service gets a log file and a pid file under
``$TUNEPLEX_HOME/run``; nothing here is test-only."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.client.config import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_REGISTRY_PORT,
    DEFAULT_TRAINER_PORT,
)
from services.client.processes import (
    ServiceProcess,
    module_argv,
    spawn,
    wait_grpc_healthy,
    wait_http_healthy,
)
from services.common.errors import NotFound

__all__ = [
    "ServiceProcess",
    "StackPorts",
    "running_pid",
    "start_all",
    "start_service",
    "stop_services",
    "wait_grpc_healthy",
    "wait_http_healthy",
]


@dataclass(frozen=True)
class StackPorts:
    registry: int = DEFAULT_REGISTRY_PORT
    trainer: int = DEFAULT_TRAINER_PORT
    gateway: int = DEFAULT_GATEWAY_PORT


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
    log = run_dir(home) / f"{name}.log"
    if pid := running_pid(home, name):
        return ServiceProcess(name, pid, log, group=True)
    proc = spawn(
        name,
        module_argv(f"services.{name}"),
        {**os.environ, "TUNEPLEX_HOME": str(home), **env},
        log,
        new_session=True,
    )
    _pid_file(home, name).write_text(str(proc.pid))
    return proc


def stop_services(home: Path, names: list[str], timeout: float = 20.0) -> list[str]:
    """SIGTERM each service's process group, SIGKILL what is left after ``timeout``."""
    stopped = []
    for name in names:
        pid = running_pid(home, name)
        if pid is not None:
            ServiceProcess(name, pid, run_dir(home) / f"{name}.log", group=True).stop(timeout)
            stopped.append(name)
        _pid_file(home, name).unlink(missing_ok=True)
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
