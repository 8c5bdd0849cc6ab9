"""vLLM engines: started and supervised as subprocesses, or attached to by URL (k8s).

Only the gateway talks to an engine. A supervisor task per engine watches it; when it dies the
engine is marked down (requests get 503 + x-should-retry), a managed one is restarted with
backoff, and once healthy the adapters it had are loaded again before it takes traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from pathlib import Path

import httpx

from services.common.errors import ResourceExhausted, Unavailable
from services.gateway import metrics
from services.gateway.models import AdapterVersion, ServedBase
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_HEALTH_FAILURES_BEFORE_DOWN = 3
_MAX_BACKOFF_S = 30.0


class EngineState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"
    STOPPED = "stopped"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs first in the child, then execs vLLM: PR_SET_PDEATHSIG survives exec, so vLLM gets
# SIGTERM if the gateway dies without stopping it. Done in the child Python rather than in a
# preexec_fn, which is unsafe once the gateway has threads.
_EXEC_WITH_PARENT_DEATH_SIGNAL = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class Engine:
    def __init__(self, engine_id: str, settings: GatewaySettings, base: ServedBase | None,
                 url: str | None):
        self.id = engine_id
        self.base = base  # None for an attached engine until it tells us what it serves
        self.url = url or ""
        self.managed = url is None
        self.state = EngineState.STARTING
        self.process: asyncio.subprocess.Process | None = None
        self.client: httpx.AsyncClient | None = None
        # Adapters registered in vLLM, least recently used first.
        self.adapters: OrderedDict[str, AdapterVersion] = OrderedDict()
        self.in_flight = 0
        self.waiting = 0
        self.port: int | None = None  # fixed port of a managed engine; None picks a free one
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrent_per_engine)
        self.check_now = asyncio.Event()

    @property
    def load(self) -> int:
        return self.in_flight + self.waiting

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _open_client(self) -> None:
        timeout = httpx.Timeout(self._settings.request_timeout_s, connect=5.0)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits)

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of the engine's request slots; 429 when the waiting line is full."""
        if self.state != EngineState.READY:
            raise Unavailable(f"engine {self.id} is {self.state.value}; retry shortly")
        if self._slots.locked() and self.waiting >= self._settings.max_queue_per_engine:
            raise ResourceExhausted("too many requests in flight for this model; retry later")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def healthy(self) -> bool:
        if self.client is None:
            return False
        try:
            resp = await self.client.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def command(self, port: int) -> list[str]:
        s = self._settings
        assert self.base is not None
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.base.path), "--served-model-name", self.base.name,
            "--enable-lora", "--max-loras", str(s.max_loras),
            "--max-cpu-loras", str(s.adapter_capacity), "--max-lora-rank", str(s.max_lora_rank),
            "--dtype", s.dtype, "--host", "127.0.0.1", "--port", str(port),
            "--disable-uvicorn-access-log",
        ]
        if s.max_model_len:
            cmd += ["--max-model-len", str(s.max_model_len)]
        return cmd + list(s.engine_extra_args)

    async def spawn(self, log_dir: Path) -> None:
        port = self.port or _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self._settings.kv_cache_gib))
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"engine-{self.id}.log").open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _EXEC_WITH_PARENT_DEATH_SIGNAL, *self.command(port),
                stdout=out, stderr=out, env=env,
                # Its own process group, so stopping it reaches vLLM's engine-core children.
                start_new_session=True,
            )
        log.info("engine %s: started vLLM pid %s on %s", self.id, self.process.pid, self.url)
        await self._close_client()
        self._open_client()

    async def kill(self) -> None:
        """Stop the vLLM process group: TERM, then KILL if it lingers."""
        proc = self.process
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                break
            except asyncio.TimeoutError:
                continue
        # A killed api_server may orphan its engine core; the group kill above reaches it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.process = None


OnReady = Callable[[Engine, list[AdapterVersion]], Awaitable[None]]


class EngineManager:
    def __init__(self, settings: GatewaySettings, on_ready: OnReady):
        self._settings = settings
        self._on_ready = on_ready
        self._bases: dict[str, ServedBase] = {}
        self.engines: list[Engine] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()

    def serve(self, bases: list[ServedBase]) -> None:
        self._bases = {b.name: b for b in bases}
        if self._settings.engine_urls:
            for i, url in enumerate(self._settings.engine_urls):
                self.engines.append(Engine(f"attached-{i}", self._settings, None, url.rstrip("/")))
        else:
            for base in bases:
                for i in range(self._settings.engines_per_model):
                    self.engines.append(Engine(f"{base.name}-{i}", self._settings, base, None))
            if self._settings.engine_port_start:
                for offset, engine in enumerate(self.engines):
                    engine.port = self._settings.engine_port_start + offset

    def start(self) -> None:
        for engine in self.engines:
            self._tasks.append(asyncio.create_task(self._supervise(engine), name=engine.id))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engine in self.engines:
            engine.state = EngineState.STOPPED
            await engine.kill()
            await engine._close_client()

    def for_base(self, name: str) -> list[Engine]:
        return [e for e in self.engines if e.base is not None and e.base.name == name]

    def report_failure(self, engine: Engine) -> None:
        """A proxied request could not reach the engine: stop routing to it and have its
        supervisor look now. Marked down at once so /health and routing agree with the 503 the
        request got; the supervisor marks it ready again if it answers health after all."""
        if engine.state == EngineState.READY:
            self._set_state(engine, EngineState.DOWN)
        engine.check_now.set()

    def _set_state(self, engine: Engine, state: EngineState) -> None:
        engine.state = state
        metrics.ENGINES_READY.set(sum(e.state == EngineState.READY for e in self.engines))

    async def _supervise(self, engine: Engine) -> None:
        backoff, up_before = 1.0, False
        while not self._stopping.is_set():
            had = list(engine.adapters.values())
            engine.adapters.clear()
            try:
                if engine.managed:
                    await engine.spawn(self._settings.home / "logs")
                elif engine.client is None:
                    engine._open_client()
                if not await self._wait_healthy(engine):
                    raise Unavailable("engine did not become healthy")
                if not engine.managed:
                    await self._discover(engine, had)
                await self._on_ready(engine, had)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: down, retry later
                log.warning("engine %s: not ready (%s); retrying in %.0fs", engine.id, exc, backoff)
                for adapter in had:  # keep the list so a later attempt reloads them
                    engine.adapters.setdefault(adapter.lora_id, adapter)
                self._set_state(engine, EngineState.DOWN)
                await engine.kill()
                await self._sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            if up_before:
                metrics.ENGINE_RESTARTS.inc()
            up_before, backoff = True, 1.0
            self._set_state(engine, EngineState.READY)
            log.info("engine %s: ready with %d adapters", engine.id, len(engine.adapters))
            await self._watch(engine)
            if self._stopping.is_set():
                return
            log.warning("engine %s: down; restarting", engine.id)
            self._set_state(engine, EngineState.DOWN)
            await engine.kill()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait_healthy(self, engine: Engine) -> bool:
        deadline = asyncio.get_running_loop().time() + self._settings.engine_start_timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if engine.process is not None and engine.process.returncode is not None:
                return False
            if await engine.healthy():
                return True
            await asyncio.sleep(0.5)
        return False

    async def _discover(self, engine: Engine, had: list[AdapterVersion]) -> None:
        """Learn which base an attached engine serves and which adapters it still has (it may
        have restarted behind our back, losing them)."""
        assert engine.client is not None
        resp = await engine.client.get("/v1/models", timeout=10.0)
        resp.raise_for_status()
        cards = resp.json()["data"]
        served = {c["id"] for c in cards if not c.get("parent")}
        matches = [b for name, b in self._bases.items() if name in served]
        if not matches:
            raise Unavailable(f"engine serves {sorted(served)}, none of {sorted(self._bases)}")
        engine.base = matches[0]
        registered = {c["id"] for c in cards if c.get("parent")}
        for adapter in had:
            if adapter.lora_id in registered:
                engine.adapters[adapter.lora_id] = adapter
        for card in cards:  # adapters loaded by someone else are left alone, not tracked
            if card.get("parent") and card["id"] not in engine.adapters:
                log.info("engine %s: ignoring adapter %s it already had", engine.id, card["id"])

    async def _watch(self, engine: Engine) -> None:
        """Return when the engine is gone: its process exited, or health failed repeatedly."""
        failures = 0
        while not self._stopping.is_set():
            if engine.process is not None and engine.process.returncode is not None:
                return
            engine.check_now.clear()
            waiter = asyncio.create_task(engine.check_now.wait())
            proc_wait = (
                asyncio.create_task(engine.process.wait()) if engine.process is not None else None
            )
            pending = [t for t in (waiter, proc_wait) if t is not None]
            await asyncio.wait(pending, timeout=self._settings.engine_health_interval_s,
                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if engine.process is not None and engine.process.returncode is not None:
                return
            if await engine.healthy():
                failures = 0
                if engine.state != EngineState.READY:  # a failure report that did not hold
                    self._set_state(engine, EngineState.READY)
                continue
            failures += 1
            if failures >= _HEALTH_FAILURES_BEFORE_DOWN or engine.check_now.is_set():
                return
