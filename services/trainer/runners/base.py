"""What the service needs of a runner: start a worker attempt, read its events, stop it, and
see the checkpoints its workers commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from services.trainer.checkpoints import CheckpointInfo


class WorkerHandle(Protocol):
    def events(self) -> AsyncIterator[dict]:
        """Event dicts from the worker until it exits."""

    async def wait(self) -> int:
        """Exit code (negative: killed by that signal)."""

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``."""


class Runner(Protocol):
    async def start(
        self, job_id: str, job_dir: Path, num_gpus: int, zero_stage: int, attempt: int = 1
    ) -> WorkerHandle: ...

    def checkpoints(self, job_id: str, job_dir: Path) -> list[CheckpointInfo] | None:
        """The job's complete checkpoints, where its next attempt will look for them, oldest
        first; None when the workers keep them where this service cannot see."""
