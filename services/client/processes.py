"""Start a service process and know when it serves: the one way `tuneplex up` (local_stack.py)
and the tests start registry, trainer and gateway.

A start is a spawn with its environment and a log file, then a wait with a deadline until the
service answers (gRPC health SERVING, or HTTP 200); a service that exits or misses the deadline
is an ``Unavailable`` carrying the end of its log, which is where the reason is. A stop is
SIGTERM (the services shut down cleanly on it), then SIGKILL for what is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import Unavailable

LOG_TAIL_LINES = 15


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick), for a service to bind next."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


@dataclass
class ServiceProcess:
    """A service's process: started here (``popen``) or found running from an earlier command
    (only its ``pid``). ``group``: it leads its own process group, which a stop signals whole
    (the vLLM engines or job workers it started go with it)."""

    name: str
    pid: int
    log: Path
    group: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def exit_status(self) -> int | None:
        """Its exit status once it has exited; None while it runs."""
        if self.popen is not None:
            return self.popen.poll()
        # Not started here: its status is its parent's to see. A zombie has exited too (the
        # parent, say a demo that started the stack in-process, has not reaped it yet).
        try:
            if psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied:
            return None
        return 0

    def failure(self, what: str) -> Unavailable:
        return Unavailable(f"{self.name} {what}; log {self.log}:\n{log_tail(self.log)}")

    def signal(self, sig: signal.Signals) -> None:
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> bool:
        """Whether it exited within ``timeout`` seconds."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.exit_status() is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.exit_status() is not None:
            return
        self.signal(signal.SIGTERM)
        if not self.wait(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as a crash."""
        if self.exit_status() is None:
            self.signal(signal.SIGKILL)
            self.wait(10.0)


def spawn(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    *,
    cwd: Path | None = None,
    new_session: bool = False,
) -> ServiceProcess:
    """Start ``argv`` with exactly ``env``, stdout and stderr appended to ``log``.
    ``new_session``: detached in its own session and process group (outlives the caller's
    terminal; stopped as a group)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
    return ServiceProcess(name, popen.pid, log, group=new_session, popen=popen)


def module_argv(module: str, python: str | None = None) -> list[str]:
    """``python -m module`` with this interpreter (or ``python``)."""
    return [python or sys.executable, "-m", module]


def wait_until(
    proc: ServiceProcess, ready: Callable[[], bool], timeout: float, interval: float = 0.2
) -> None:
    """Poll ``ready`` until it is true; ``Unavailable`` with the log's tail if the process exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        status = proc.exit_status()
        if status is not None:
            raise proc.failure(f"exited (status {status})")
        if ready():
            return
        if time.monotonic() > deadline:
            raise proc.failure(f"did not become healthy in {timeout:.0f}s")
        time.sleep(interval)


def wait_grpc_healthy(proc: ServiceProcess, target: str, timeout: float = 120.0) -> None:
    """Until the gRPC health check at ``target`` says SERVING."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(proc, serving, timeout)


def wait_http_healthy(proc: ServiceProcess, url: str, timeout: float = 600.0) -> None:
    """Until GET ``url`` answers 200."""

    def ok() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(proc, ok, timeout, interval=0.5)


def wait_port_open(proc: ServiceProcess, host: str, port: int, timeout: float = 60.0) -> None:
    """Until something accepts TCP connections on ``host:port`` (a server with no health
    route)."""

    def accepting() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(proc, accepting, timeout, interval=0.1)
