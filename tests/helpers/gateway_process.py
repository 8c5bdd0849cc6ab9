"""The real gateway as a subprocess on a loopback port (`python -m services.gateway`), for e2e
tests and benchmarks. It starts (or attaches to) its own vLLM engines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class GatewayProcess:
    url: str
    api_key: str | None
    home: Path
    process: subprocess.Popen
    log_path: Path = field(repr=False)

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def log(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail:]

    def engine_pids(self) -> list[int]:
        """The vLLM api_server processes this gateway started."""
        pids = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if "vllm.entrypoints.openai.api_server" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return pids

    def engine_sockets(self) -> list[Path]:
        """The private unix sockets those engines listen on (they open no TCP port)."""
        sockets = []
        for pid in self.engine_pids():
            cmd = psutil.Process(pid).cmdline()
            sockets.append(Path(cmd[cmd.index("--uds") + 1]))
        return sockets

    def engine_get(self, path: str) -> httpx.Response:
        """GET one of the engine's unguarded routes (/metrics, /health) straight from vLLM:
        tests peek at its own counters there."""
        [sock] = self.engine_sockets()
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://engine", timeout=10) as client:
            return client.get(path)

    def wait_healthy(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"gateway not healthy after {timeout}s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: the gateway stops its engines before it exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.process.pid).children(recursive=True):
                    child.kill()
                self.process.kill()
                self.process.wait()


def start_gateway(home: Path, registry_target: str, *, api_key: str | None = "test-key",
                  env: dict[str, str] | None = None) -> GatewayProcess:
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEPLEX_GATEWAY_")}
    full_env.update(
        TUNEPLEX_HOME=str(home),
        TUNEPLEX_GATEWAY_PORT=str(port),
        TUNEPLEX_GATEWAY_REGISTRY_TARGET=registry_target,
        TUNEPLEX_GATEWAY_BASE_MODELS='["smollm2-135m-instruct"]',
        # Small enough for a 2-core, shared CI machine.
        TUNEPLEX_GATEWAY_KV_CACHE_GIB="1",
        TUNEPLEX_GATEWAY_MAX_MODEL_LEN="512",
        PYTHONUNBUFFERED="1",
    )
    if api_key:
        full_env["TUNEPLEX_GATEWAY_API_KEY"] = api_key
    full_env.update(env or {})
    log_path = home / "gateway.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=REPO,
                                   env=full_env, stdout=out, stderr=subprocess.STDOUT)
    return GatewayProcess(f"http://127.0.0.1:{port}", api_key, home, process, log_path)
