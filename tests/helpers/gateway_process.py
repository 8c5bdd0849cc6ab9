"""The real gateway as a subprocess on a loopback port (`python -m services.gateway`), for e2e
tests and benchmarks. It starts (or attaches to) its own vLLM engines."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from services.client.processes import wait_http_healthy
from tests.helpers.service_process import REPO, ServiceUnderTest, free_port, service_env

__all__ = ["REPO", "GatewayProcess", "start_gateway"]


@dataclass(kw_only=True)
class GatewayProcess(ServiceUnderTest):
    url: str
    api_key: str | None = None

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def log(self, tail: int | None = 4000) -> str:
        return super().log(tail)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def engine_pids(self) -> list[int]:
        """The vLLM api_server processes this gateway started."""
        pids = []
        for child in psutil.Process(self.pid).children(recursive=True):
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
        assert self.process is not None
        wait_http_healthy(self.process, f"{self.url}/health", timeout)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: the gateway stops its engines before it exits. Past ``timeout``, SIGKILL
        for it and every engine it started."""
        if self.process is None or self.process.exit_status() is not None:
            return
        self.process.signal(signal.SIGTERM)
        if not self.process.wait(timeout):
            for child in psutil.Process(self.pid).children(recursive=True):
                child.kill()
            self.process.kill()


def start_gateway(
    home: Path,
    registry_target: str,
    *,
    api_key: str | None = "test-key",
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> GatewayProcess:
    """Start ``python -m services.gateway`` on a free loopback port; it loads vLLM in the
    background, so `wait_healthy` tells when it serves."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    settings = {
        "PORT": str(port),
        "REGISTRY_TARGET": registry_target,
        "BASE_MODELS": '["smollm2-135m-instruct"]',
        # Small enough for a 2-core, shared CI machine.
        "KV_CACHE_GIB": "1",
        "MAX_MODEL_LEN": "512",
    }
    if api_key:
        settings["API_KEY"] = api_key
    gateway = GatewayProcess(
        name="gateway",
        url=f"http://127.0.0.1:{port}",
        api_key=api_key,
        home=home,
        env=service_env("gateway", home, settings, env),
        log_path=home / "gateway.log",
    )
    gateway.spawn()
    return gateway
