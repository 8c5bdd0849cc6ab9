"""vLLM engines: started and supervised as subprocesses, or attached to by URL (k8s).

Only the gateway talks to an engine. A supervisor task per engine watches it; when it dies the
engine is marked down (requests get 503 + x-should-retry), a managed one is restarted with
backoff, and once healthy its listener (adapter residency) is told before it takes traffic, so
the adapters it had are loaded again first. This module knows processes, health and request
slots; which adapters an engine has is residency's (residency.py), told through EngineListener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import httpx

from services.common.errors import Unavailable
from services.gateway import metrics
from services.gateway.admission import AdmissionPolicy, ServiceTime
from services.gateway.engine_access import EngineAccess, SocketFolder, attached, managed_on_port
from services.gateway.served import ServedBase
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_HEALTH_FAILURES_BEFORE_DOWN = 3
_MAX_BACKOFF_S = 30.0


class EngineState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"
    STOPPED = "stopped"


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


class Slot:
    """One request's hold on an engine slot; `served` once its answer went out in full."""

    __slots__ = ("served",)

    def __init__(self) -> None:
        self.served = False


class Engine:
    def __init__(self, engine_id: str, settings: GatewaySettings, base: ServedBase | None,
                 url: str | None):
        self.id = engine_id
        self.base = base  # None for an attached engine until it tells us what it serves
        self.managed = url is None
        # Where and with which key the gateway reaches it; a managed engine gets a new one at
        # each start (engine_access.py says why nothing else can reach it).
        self.access: EngineAccess | None = None if url is None else attached(
            url, settings.engine_api_key_value())
        self.state = EngineState.STARTING
        self.process: asyncio.subprocess.Process | None = None
        self.client: httpx.AsyncClient | None = None
        self.max_model_len: int | None = None  # from the engine's /v1/models once ready
        self.in_flight = 0
        self.waiting = 0
        self.port: int | None = None  # fixed port of a managed engine; None: a private socket
        self.sockets: SocketFolder | None = None  # where a managed engine's socket goes
        self.index = 0  # its number among the engines: names its socket
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.engine_concurrency)
        self._admission = AdmissionPolicy(settings.engine_concurrency,
                                          settings.max_queue_per_engine,
                                          settings.max_queue_time_s or None)
        self.service_time = ServiceTime()
        self._started: dict[Slot, float] = {}  # when each request in flight took its slot
        self.check_now = asyncio.Event()
        self.on_demand = False  # started for a request (on_demand.py), stopped when idle
        self.last_used = time.monotonic()  # when a request last took or left a slot

    @property
    def url(self) -> str:
        return self.access.url if self.access is not None else ""

    @property
    def load(self) -> int:
        return self.in_flight + self.waiting

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def http(self) -> httpx.AsyncClient:
        """The HTTP client of the running engine."""
        if self.client is None:
            raise Unavailable(f"the model's engine is {self.state.value}; retry shortly")
        return self.client

    async def models(self) -> list[dict[str, Any]]:
        """vLLM's `/v1/models` cards: the served base, and adapters (cards with a parent)."""
        resp = await self.http().get("/v1/models", timeout=10.0)
        resp.raise_for_status()
        return list(resp.json()["data"])

    def _open_client(self) -> None:
        assert self.access is not None
        timeout = httpx.Timeout(self._settings.request_timeout_s, connect=5.0)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self.client = self.access.client(timeout, limits)

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[Slot]:
        """Hold one of the engine's request slots. 429 with a retry-after (admission.py) when
        the expected wait for one is past max_queue_time_s, or the waiting line is full. The
        caller marks the slot served once the whole answer went out: only those durations
        make the estimate (a failed or abandoned request says nothing about a served one)."""
        if self.state != EngineState.READY:
            raise Unavailable(f"the model's engine is {self.state.value}; retry shortly")
        decision = self._admission.decide(self._started.values(), self.waiting,
                                          time.monotonic(), self.service_time)
        if not decision.admit:
            metrics.REQUESTS_REFUSED.inc()
            raise self._admission.refusal(decision)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        slot, self.in_flight = Slot(), self.in_flight + 1
        self._started[slot] = self.last_used = time.monotonic()
        try:
            yield slot
        finally:
            self.last_used = time.monotonic()
            held = self.last_used - self._started.pop(slot)
            if slot.served:
                self.service_time.observe(held)
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

    def command(self, port: int | None) -> list[str]:
        s = self._settings
        assert self.base is not None and self.access is not None
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.base.path), "--served-model-name", self.base.name,
            "--enable-lora", "--max-loras", str(s.max_loras),
            "--max-cpu-loras", str(s.adapter_capacity), "--max-lora-rank", str(s.max_lora_rank),
            "--dtype", s.dtype, *self.access.listen_args(port), "--disable-uvicorn-access-log",
        ]
        if s.max_model_len:
            cmd += ["--max-model-len", str(s.max_model_len)]
        return cmd + list(s.engine_extra_args)

    async def spawn(self, log_dir: Path) -> None:
        port = self.port
        if port:
            self.access = managed_on_port(port)
        else:
            assert self.sockets is not None
            self.access = self.sockets.access(self.index)
        env = dict(os.environ)
        env.pop("VLLM_API_KEY", None)
        env.update(self.access.env())  # not --api-key: a command line is readable by anyone
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
        log.info("engine %s: started vLLM pid %s on %s", self.id, self.process.pid,
                 self.access.uds or self.access.url)
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


class EngineListener(Protocol):
    """Told of an engine's lifecycle by the EngineManager; the manager knows nothing else of
    it (adapter residency implements it)."""

    async def engine_ready(self, engine: Engine) -> None:
        """The engine answers health, on first start or after a restart or outage, and takes
        traffic once this returns. Raising keeps it down; it is tried again with backoff."""
        ...


class EngineManager:
    def __init__(self, settings: GatewaySettings, listener: EngineListener):
        self._settings = settings
        self._listener = listener
        self._bases: dict[str, ServedBase] = {}
        self.engines: list[Engine] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self._sockets: SocketFolder | None = None
        self._supervisors: dict[str, asyncio.Task] = {}  # of the engines `add` started

    def serve(self, bases: list[ServedBase]) -> None:
        self._bases = {b.name: b for b in bases}
        if self._settings.engine_urls:
            for i, url in enumerate(self._settings.engine_urls):
                self.engines.append(Engine(f"attached-{i}", self._settings, None, url.rstrip("/")))
        else:
            for base in bases:
                for i in range(self._settings.engines_per_model):
                    self.engines.append(Engine(f"{base.name}-{i}", self._settings, base, None))
            if not self._settings.engine_port_start:
                self._sockets = SocketFolder()
            for offset, engine in enumerate(self.engines):
                engine.index, engine.sockets = offset, self._sockets
                if self._settings.engine_port_start:
                    engine.port = self._settings.engine_port_start + offset

    def start(self) -> None:
        for engine in self.engines:
            self._tasks.append(asyncio.create_task(self._supervise(engine), name=engine.id))

    @property
    def manages_processes(self) -> bool:
        """Whether this gateway starts its engines (it can then start more on demand)."""
        return not self._settings.engine_urls

    def add(self, base: ServedBase, engine_id: str) -> Engine:
        """Start one more managed engine, for `base`, supervised like the others."""
        if not self.manages_processes:
            raise RuntimeError("attached engines cannot be started by the gateway")
        if self._sockets is None and not self._settings.engine_port_start:
            self._sockets = SocketFolder()
        engine = Engine(engine_id, self._settings, base, None)
        # Socket names and ports by index: never one a running engine holds.
        engine.index = max((e.index for e in self.engines), default=-1) + 1
        engine.sockets = self._sockets
        if self._settings.engine_port_start:
            engine.port = self._settings.engine_port_start + engine.index
        engine.on_demand = True
        self.engines.append(engine)
        task = asyncio.create_task(self._supervise(engine), name=engine.id)
        self._tasks.append(task)
        self._supervisors[engine.id] = task
        return engine

    async def remove(self, engine: Engine) -> None:
        """Stop an engine `add` started, and forget it."""
        engine.state = EngineState.STOPPED  # no request is sent to it from now on
        task = self._supervisors.pop(engine.id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._tasks.remove(task)
        if engine in self.engines:
            self.engines.remove(engine)
        engine.state = EngineState.STOPPED
        await engine.kill()
        await engine._close_client()
        metrics.ENGINES_READY.set(sum(e.state == EngineState.READY for e in self.engines))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engine in self.engines:
            engine.state = EngineState.STOPPED
            await engine.kill()
            await engine._close_client()
        if self._sockets is not None:
            self._sockets.remove()

    def for_base(self, name: str) -> list[Engine]:
        """The engines of a configured base. Not the on-demand ones: one may serve another
        version under the same name (on_demand.py hands its engine out itself)."""
        return [e for e in self.engines
                if e.base is not None and e.base.name == name and not e.on_demand]

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
            try:
                if engine.managed:
                    # Said by /health and in 503s: coming back, not gone.
                    self._set_state(engine, EngineState.STARTING)
                    await engine.spawn(self._settings.home / "logs")
                elif engine.client is None:
                    engine._open_client()
                if not await self._wait_healthy(engine):
                    raise Unavailable("engine did not become healthy")
                await self._discover(engine)
                await self._listener.engine_ready(engine)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: down, retry later
                log.warning("engine %s: not ready (%s); retrying in %.0fs", engine.id, exc, backoff)
                self._set_state(engine, EngineState.DOWN)
                await engine.kill()
                await self._sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            if up_before:
                metrics.ENGINE_RESTARTS.inc()
            up_before, backoff = True, 1.0
            # Idleness counts from here: a start that took long was not an idle engine.
            engine.last_used = time.monotonic()
            self._set_state(engine, EngineState.READY)
            log.info("engine %s: ready", engine.id)
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

    async def _discover(self, engine: Engine) -> None:
        """Learn which base an attached engine serves, and the context length of any engine
        (what caps a request's default max_tokens: vLLM refuses max_tokens above it)."""
        bases = [c for c in await engine.models() if not c.get("parent")]
        if not engine.managed:
            served = {c["id"] for c in bases}
            matches = [b for name, b in self._bases.items() if name in served]
            if not matches:
                raise Unavailable(
                    f"engine serves {sorted(served)}, none of {sorted(self._bases)}")
            engine.base = matches[0]
        assert engine.base is not None
        lengths = [c.get("max_model_len") for c in bases if c["id"] == engine.base.name]
        engine.max_model_len = lengths[0] if lengths and isinstance(lengths[0], int) else None

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
