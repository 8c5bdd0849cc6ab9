"""services/client/processes.py on small real processes: a service that dies or never serves is
an error carrying its log's tail; one that serves is waited for; a stop is SIGTERM, then SIGKILL
for one that ignores it, and reaches the whole group of a detached service."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.client.processes import (
    ServiceProcess,
    free_port,
    spawn,
    wait_http_healthy,
    wait_until,
)
from services.common.errors import Unavailable


def python(tmp_path: Path, code: str, *, new_session: bool = False) -> ServiceProcess:
    return spawn(
        "svc", [sys.executable, "-c", code], {}, tmp_path / "svc.log", new_session=new_session
    )


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_service_that_exits_is_an_error_with_its_log(tmp_path):
    proc = python(tmp_path, "import sys; print('bad setting TUNEPLEX_X_PORT'); sys.exit(2)")
    with pytest.raises(Unavailable) as raised:
        wait_http_healthy(proc, f"http://127.0.0.1:{free_port()}/health", timeout=30)
    assert "svc exited (status 2)" in raised.value.message
    assert "bad setting TUNEPLEX_X_PORT" in raised.value.message


def test_a_service_that_never_serves_misses_the_deadline(tmp_path):
    proc = python(tmp_path, "import time; print('loading', flush=True); time.sleep(60)")
    try:
        start = time.monotonic()
        with pytest.raises(Unavailable) as raised:
            wait_until(proc, lambda: False, timeout=0.5)
        assert time.monotonic() - start < 10
        assert "did not become healthy in 0s" in raised.value.message  # rounds down
    finally:
        proc.kill()
    assert proc.exit_status() == -signal.SIGKILL


def test_a_serving_service_is_waited_for_and_stopped_with_sigterm(tmp_path):
    port = free_port()
    code = (
        "import http.server, time; time.sleep(0.5)\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()"
    )
    proc = python(tmp_path, code)
    try:
        wait_http_healthy(proc, f"http://127.0.0.1:{port}/", timeout=30)
        assert proc.exit_status() is None
    finally:
        proc.stop(timeout=10)
    assert proc.exit_status() == -signal.SIGTERM


def test_a_service_that_ignores_sigterm_is_killed(tmp_path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = python(tmp_path, code)
    wait_until(proc, lambda: "ready" in (tmp_path / "svc.log").read_text(), timeout=30)
    proc.stop(timeout=0.5)
    assert proc.exit_status() == -signal.SIGKILL


def test_stopping_a_detached_service_stops_what_it_started(tmp_path):
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True); time.sleep(60)"
    )
    proc = python(tmp_path, code, new_session=True)
    log = tmp_path / "svc.log"
    wait_until(proc, lambda: log.read_text().strip().isdigit(), timeout=30)
    child = psutil.Process(int(log.read_text()))
    # Found again from its pid alone, as `tuneplex stop` finds what `tuneplex up` started.
    ServiceProcess("svc", proc.pid, log, group=True).stop(timeout=10)
    child.wait(timeout=10)
    assert not child.is_running()
    assert proc.wait(10) and proc.exit_status() == -signal.SIGTERM
