"""First come, first served, at most ``concurrency`` jobs at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class JobQueue:
    def __init__(self, run_job: Callable[[str], Awaitable[None]], concurrency: int):
        self._run_job = run_job
        self._concurrency = concurrency
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._slots: list[asyncio.Task] = []

    @property
    def concurrency(self) -> int:
        """How many jobs run at once: what admission leaves memory for beside a new one."""
        return self._concurrency

    def submit(self, job_id: str) -> None:
        self._queue.put_nowait(job_id)

    def start(self) -> None:
        self._slots = [asyncio.create_task(self._slot()) for _ in range(self._concurrency)]

    async def _slot(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run_job(job_id)
            except Exception:  # noqa: BLE001 - one broken job must not stop the queue
                log.exception("job %s crashed its supervisor", job_id)

    async def stop(self) -> None:
        for task in self._slots:
            task.cancel()
        for task in self._slots:
            with contextlib.suppress(asyncio.CancelledError):
                await task
