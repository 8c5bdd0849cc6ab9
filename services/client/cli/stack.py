"""`tuneplex serve|up|stop`: run the services in the foreground, or all of them in the
background on this machine with the embedded defaults."""

from __future__ import annotations

import enum
import importlib
from pathlib import Path

import typer

from services.client.cli.console import err, fail_with, out
from services.common.errors import TuneplexError
from services.common.settings import default_home

SERVICES = ["registry", "trainer", "gateway"]


class Service(str, enum.Enum):
    registry = "registry"
    trainer = "trainer"
    gateway = "gateway"


def serve(service: Service = typer.Argument(..., help="Which service to run.")) -> None:
    """Run one service in the foreground (settings from TUNEPLEX_<SERVICE>_* variables)."""
    importlib.import_module(f"services.{service.value}.main").main()


def stop(
    home: Path = typer.Option(None, envvar="TUNEPLEX_HOME", help="Data directory."),
) -> None:
    """Stop the services that `tuneplex up` or `tuneplex demo` started."""
    from services.client.local_stack import stop_services

    try:
        stopped = stop_services(home or default_home(), list(reversed(SERVICES)))
    except TuneplexError as exc:
        fail_with(exc)
    if stopped:
        out.print("stopped " + ", ".join(stopped))
    else:
        err.print("nothing was running")


def up(
    home: Path = typer.Option(None, envvar="TUNEPLEX_HOME", help="Data directory."),
    base_model: str = typer.Option("smollm2-135m-instruct", help="Base model to import and serve."),
    wait: bool = typer.Option(True, help="Wait until the gateway serves (vLLM loads ~1-2 min)."),
) -> None:
    """Start registry, trainer and gateway in the background with the embedded defaults."""
    from services.client import local_stack

    home = home or default_home()
    ports = local_stack.StackPorts()
    try:
        local_stack.start_all(home, ports, base_model=base_model, say=lambda m: err.print(m))
        if wait:
            proc = local_stack.start_service(home, "gateway", {})
            local_stack.wait_http_healthy(proc, f"http://127.0.0.1:{ports.gateway}/health")
    except TuneplexError as exc:
        fail_with(exc)
    out.print(f"up: gateway http://127.0.0.1:{ports.gateway}/v1, logs in {home / 'run'}")
