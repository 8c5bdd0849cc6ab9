"""Local runner: each job attempt is a subprocess in its own process group.

One device: ``python -m services.trainer.worker``. More than one GPU: the same module under
``torchrun --nproc_per_node N`` with a generated DeepSpeed ZeRO-2/3 config. The group is what
cancel signals, so torchrun's ranks stop with it. The worker is also bound to the service with
PR_SET_PDEATHSIG: if the service dies, its workers die too and the restarted service resumes
them from their last checkpoint, instead of leaving orphans nobody reads. The worker sets
that itself at start from ``PARENT_PID_ENV`` (``worker.protocol.bind_to_parent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from services.trainer.checkpoints import CheckpointInfo, complete_checkpoints
from services.trainer.runners.deepspeed import write_zero_config
from services.trainer.worker.protocol import (
    ATTEMPT_ENV,
    CHECKPOINTS_DIR,
    DEEPSPEED_FILE,
    LOG_FILE,
    PARENT_PID_ENV,
    launch_command,
    parse_event_line,
)


def worker_command(job_dir: Path, num_gpus: int, zero_stage: int) -> list[str]:
    return launch_command(sys.executable, job_dir, num_gpus)


class LocalWorker:
    def __init__(self, process: asyncio.subprocess.Process, log_path: Path):
        self.process = process
        self.log_path = log_path

    async def events(self) -> AsyncIterator[dict]:
        assert self.process.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as log:
            async for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                event = parse_event_line(line)
                if event is None:
                    log.write(line + "\n")
                    log.flush()
                else:
                    yield event

    async def wait(self) -> int:
        return await self.process.wait()

    async def stop(self, grace_seconds: float) -> None:
        pid = self.process.pid
        for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            try:
                await asyncio.wait_for(self.process.wait(), wait)
                return
            except asyncio.TimeoutError:
                continue


class LocalRunner:
    def __init__(self, extra_env: dict[str, str] | None = None):
        self.extra_env = extra_env or {}

    def checkpoints(self, job_id: str, job_dir: Path) -> list[CheckpointInfo]:
        return complete_checkpoints(job_dir / CHECKPOINTS_DIR)

    async def start(
        self, job_id: str, job_dir: Path, num_gpus: int, zero_stage: int, attempt: int = 1
    ) -> LocalWorker:
        if num_gpus > 1:
            write_zero_config(zero_stage, job_dir / DEEPSPEED_FILE)
        log_path = job_dir / LOG_FILE
        env = {
            **os.environ,
            **self.extra_env,
            "PYTHONUNBUFFERED": "1",
            "TRANSFORMERS_VERBOSITY": "warning",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            PARENT_PID_ENV: str(os.getpid()),
            ATTEMPT_ENV: str(attempt),
        }
        with open(log_path, "a") as log:
            log.write(f"--- {job_id}: starting attempt {attempt}\n")
        stderr = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed below
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_command(job_dir, num_gpus, zero_stage),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=str(Path(__file__).resolve().parents[3]),
                start_new_session=True,
                limit=1 << 20,
            )
        finally:
            stderr.close()
        return LocalWorker(process, log_path)
