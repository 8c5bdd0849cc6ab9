"""One of our services as a subprocess on loopback ports, for tests of every tier and the
benchmarks. Spawning, waiting until it serves and stopping are the product's own
(``services/client/processes.py``, what `tuneplex up` uses); what is the tests' is the
environment: a fresh home, free ports (the metrics port too, so many can run at once), and none
of the developer's own ``TUNEPLEX_<SERVICE>_*`` settings.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.client.processes import ServiceProcess, free_port, module_argv, spawn

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"

__all__ = ["REPO", "VENV_PYTHON", "ServiceUnderTest", "free_port", "python", "service_env"]


def python() -> str:
    return str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))


def service_env(
    service: str, home: Path, settings: dict[str, str], extra: dict[str, str] | None = None
) -> dict[str, str]:
    """This process's environment without ``TUNEPLEX_<SERVICE>_*``, with ``TUNEPLEX_HOME`` =
    ``home``, then ``settings`` (``PORT``-style names, prefixed here), then ``extra`` (full
    names, which win)."""
    prefix = f"TUNEPLEX_{service.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefix)}
    env.update(TUNEPLEX_HOME=str(home), PYTHONUNBUFFERED="1")
    env.update({prefix + name: value for name, value in settings.items()})
    env.update(extra or {})
    return env


@dataclass(kw_only=True)
class ServiceUnderTest:
    """``python -m services.<name>`` with ``env``, logging to ``log_path``."""

    name: str
    home: Path
    env: dict[str, str] = field(repr=False)
    log_path: Path = field(repr=False)
    process: ServiceProcess | None = field(default=None, repr=False)

    def spawn(self) -> ServiceProcess:
        self.process = spawn(
            self.name,
            module_argv(f"services.{self.name}", python()),
            self.env,
            self.log_path,
            cwd=REPO,
        )
        return self.process

    def log(self, tail: int | None = None) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if tail is None else text[-tail:]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.process is not None:
            self.process.kill()

    def killed_if_it_fails(self, wait: Callable[[], None]) -> None:
        """Run ``wait``; a service that never came to serve is not left running."""
        try:
            wait()
        except BaseException:
            self.kill()
            raise
