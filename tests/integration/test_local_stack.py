"""`tuneplex up` / `tuneplex stop`'s process handling (services/client/local_stack.py) on a real
registry: started detached with a pid file, found again instead of started twice, told apart
from a crash with its log, stopped with what it runs."""

from __future__ import annotations

import os

import pytest

from services.client import local_stack
from services.client.processes import free_port
from services.common.errors import Unavailable

pytestmark = pytest.mark.integration


def test_start_find_again_and_stop_a_service(tmp_path):
    port = free_port()
    env = {"TUNEPLEX_REGISTRY_PORT": str(port), "TUNEPLEX_REGISTRY_METRICS_PORT": "0"}
    proc = local_stack.start_service(tmp_path, "registry", env)
    try:
        local_stack.wait_grpc_healthy(proc, f"127.0.0.1:{port}", timeout=60)
        assert local_stack.running_pid(tmp_path, "registry") == proc.pid
        # Its own session and process group: `tuneplex stop` ends it with what it started.
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        again = local_stack.start_service(tmp_path, "registry", env)
        assert again.pid == proc.pid  # found from its pid file, not started twice
    finally:
        stopped = local_stack.stop_services(tmp_path, ["trainer", "registry"])
    assert stopped == ["registry"]
    assert local_stack.running_pid(tmp_path, "registry") is None
    assert proc.exit_status() is not None


def test_a_service_that_cannot_start_says_why(tmp_path):
    env = {"TUNEPLEX_REGISTRY_PORT": "not-a-port"}
    proc = local_stack.start_service(tmp_path, "registry", env)
    with pytest.raises(Unavailable) as raised:
        local_stack.wait_grpc_healthy(proc, "127.0.0.1:1", timeout=60)
    assert "registry exited" in raised.value.message
    assert "TUNEPLEX_REGISTRY_PORT" in raised.value.message
    local_stack.stop_services(tmp_path, ["registry"])
