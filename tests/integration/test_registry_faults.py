"""Crashes: a registry SIGKILLed in the middle of an upload publishes nothing, and the same
upload succeeds after a restart; the startup GC removes what the crash left."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from services.client.registry import RegistryClient
from services.common.errors import NotFound, TuneplexError
from tests.helpers.registry_artifacts import TINY_MODEL, write_adapter, write_model
from tests.helpers.registry_process import REPO, start_registry

pytestmark = pytest.mark.integration

BIG = 64 * 1024 * 1024


def test_sigkill_during_upload_leaves_no_version_and_retry_succeeds(tmp_path):
    adapter = write_adapter(tmp_path / "big", size_bytes=BIG)
    server = start_registry(tmp_path / "home", env={"TUNEPLEX_REGISTRY_GC_GRACE_SECONDS": "0"})
    tmp_dir = server.home / "registry" / "blobs" / "tmp"
    try:
        with RegistryClient(server.target) as client:
            client.push("model", TINY_MODEL, write_model(tmp_path / "m"))
        outcome: list[BaseException | object] = []

        def upload() -> None:
            try:
                with RegistryClient(server.target) as c:
                    outcome.append(c.push("adapter", "crash-lora", adapter))
            except TuneplexError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=upload)
        thread.start()
        # Kill once the big file is part-way into the store.
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 2 * 1024 * 1024 for p in tmp_dir.glob("put-*")):
            assert time.monotonic() < deadline, "upload never reached the blob store"
            assert thread.is_alive(), f"upload ended before the kill: {outcome}"
            time.sleep(0.002)
        server.kill()
        thread.join(30)
        assert isinstance(outcome[0], TuneplexError), outcome  # the client saw a failure
        assert list(tmp_dir.glob("put-*")), "the crash should have left a partial temp file"

        server.restart()
        with RegistryClient(server.target) as client:
            with pytest.raises(NotFound):
                client.get("adapter", "crash-lora")
            assert [a.name for a in client.list("adapter")] == []
            # The startup GC (grace 0 here) removes the partial file; wait for it before the
            # retry so that it cannot race the retry's fresh blobs.
            deadline = time.monotonic() + 10
            while list(tmp_dir.glob("put-*")):
                assert time.monotonic() < deadline, "GC did not remove the partial upload"
                time.sleep(0.05)
            version = client.push("adapter", "crash-lora", adapter)
            assert version.version == 1
            client.pull("adapter", "crash-lora", tmp_path / "back")
        got = (tmp_path / "back" / "adapter_model.safetensors").read_bytes()
        assert got == (adapter / "adapter_model.safetensors").read_bytes()
    finally:
        server.stop()


def test_client_killed_mid_upload_leaves_registry_clean(tmp_path):
    adapter = write_adapter(tmp_path / "big", size_bytes=BIG)
    server = start_registry(tmp_path / "home")
    tmp_dir = server.home / "registry" / "blobs" / "tmp"
    script = (
        "import sys; from pathlib import Path; from services.client.registry import RegistryClient;"
        "RegistryClient(sys.argv[1]).push('adapter', 'gone-lora', Path(sys.argv[2]),"
        " base_model='tiny-base')"
    )
    try:
        with RegistryClient(server.target) as client:
            client.push("model", TINY_MODEL, write_model(tmp_path / "m"))
            proc = subprocess.Popen(
                [sys.executable, "-c", script, server.target, str(adapter)], cwd=REPO
            )
            deadline = time.monotonic() + 30
            while not any(p.stat().st_size > 2 * 1024 * 1024 for p in tmp_dir.glob("put-*")):
                assert time.monotonic() < deadline and proc.poll() is None, "upload not caught"
                time.sleep(0.002)
            proc.kill()
            proc.wait()
            # The registry notices the broken stream, aborts the put and removes its temp file.
            deadline = time.monotonic() + 15
            while list(tmp_dir.glob("put-*")):
                assert time.monotonic() < deadline, "partial upload was not cleaned up"
                time.sleep(0.05)
            with pytest.raises(NotFound):
                client.get("adapter", "gone-lora")
            assert client.push("adapter", "gone-lora", adapter).version == 1
    finally:
        server.stop()
