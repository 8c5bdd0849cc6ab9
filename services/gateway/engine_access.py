"""How the gateway reaches an engine, and nothing else on the machine does.

vLLM's own HTTP API loads an adapter from any path it is given, and lists the cache paths of
those it has: on a loopback port any local process could use it and skip the registry's checks.
vLLM's `--api-key` guards only paths under `/v1` (serve/middleware/authenticate.py): the
SageMaker routes it mounts as well (`POST /adapters` loads an adapter, `/invocations` runs a
request) and `/tokenize` stay open. So an engine the gateway starts listens on a unix socket
in a folder only the gateway's user can enter (mode 0700), opens no TCP port, and also wants a
random key, generated at each start, handed over in its environment (a command line is
readable by every user in /proc). An engine attached by URL (k8s) gets the configured key; its
network must admit the gateway alone (a NetworkPolicy), since the open routes stay open.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Unix socket paths are limited to 107 bytes (sun_path): short names in a short folder.
_SOCKET_DIR_PREFIX = "tuneplex-engines-"


@dataclass
class EngineAccess:
    """The address and key of one engine. `uds` set: a managed engine on a private socket."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    uds: Path | None = None

    def client(self, timeout: httpx.Timeout, limits: httpx.Limits) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else None
        transport = httpx.AsyncHTTPTransport(uds=str(self.uds), limits=limits) if self.uds \
            else None
        return httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits,
                                 headers=headers, transport=transport)

    def listen_args(self, port: int | None) -> list[str]:
        """vLLM flags for where to listen: the socket, or a loopback port when one is set."""
        if self.uds is not None:
            return ["--uds", str(self.uds)]
        return ["--host", "127.0.0.1", "--port", str(port)]

    def env(self) -> dict[str, str]:
        return {"VLLM_API_KEY": self.api_key} if self.api_key else {}


class SocketFolder:
    """A private folder (0700, as mkdtemp makes it) for the sockets of the engines the gateway
    starts; removed when the gateway stops."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=_SOCKET_DIR_PREFIX))

    def access(self, index: int) -> EngineAccess:
        """A new key and a socket path for engine number `index`, for one start of it."""
        sock = self.path / f"{index}.sock"
        sock.unlink(missing_ok=True)  # left by a killed engine: vLLM would refuse to bind
        return EngineAccess("http://engine", secrets.token_urlsafe(32), sock)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def managed_on_port(port: int) -> EngineAccess:
    """A managed engine on a fixed loopback port (engine_port_start): reachable by local
    processes, so only the `/v1` routes are guarded (by a new key)."""
    return EngineAccess(f"http://127.0.0.1:{port}", secrets.token_urlsafe(32))


def attached(url: str, api_key: str | None) -> EngineAccess:
    return EngineAccess(url.rstrip("/"), api_key)
