"""The contract between the trainer service and its worker processes, in one place.

The service (supervisor, runners) and the worker both import this module, and it imports
nothing of the ML stack: the service process must stay free of torch and transformers.

- **Launch**: ``python -m services.trainer.worker --job-dir DIR`` (``worker_args``). The config
  is ``DIR/worker.json`` or, on Kubernetes, the ``CONFIG_ENV`` variable; a multi-GPU job's
  DeepSpeed config is ``DIR/deepspeed.json`` or ``DEEPSPEED_ENV``.
- **Events**: the worker's stdout lines that start with ``EVENT_PREFIX`` carry one JSON object
  with a ``type`` (``emit`` / ``parse_event_line``); every other line is log.
- **Exit codes**: 0 published; ``EXIT_DOMAIN_ERROR`` the job is wrong and a ``failed`` event
  says why (no retry); anything else a crash (the service resumes from the newest checkpoint).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, model_validator

from services.common.errors import TuneplexError, Unavailable
from services.trainer.eval_spec import EvalConfig
from services.trainer.export_spec import ExportConfig
from services.trainer.spec import TrainingConfig

WORKER_MODULE = "services.trainer.worker"

# The job folder, as the service lays it out and the worker reads it.
CONFIG_FILE = "worker.json"
DEEPSPEED_FILE = "deepspeed.json"
CHECKPOINTS_DIR = "checkpoints"
LOG_FILE = "worker.log"

# Environment the runners set for the worker.
CONFIG_ENV = "TUNEPLEX_WORKER_CONFIG"  # the config itself, where the job folder is not shared
DEEPSPEED_ENV = "TUNEPLEX_WORKER_DEEPSPEED"
PARENT_PID_ENV = "TUNEPLEX_WORKER_PARENT_PID"  # set by the local runner: see bind_to_parent
REGISTRY_KEY_ENV = "TUNEPLEX_TRAINER_REGISTRY_API_KEY"
GATEWAY_KEY_ENV = "TUNEPLEX_TRAINER_GATEWAY_API_KEY"  # eval workers sample through the gateway
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"
ATTEMPT_ENV = "TUNEPLEX_WORKER_ATTEMPT"  # which attempt of the job this is, from 1

EVENT_PREFIX = "@@tuneplex-event "
EXIT_DOMAIN_ERROR = 3  # the job is wrong, retrying cannot help
EXIT_CRASH = 1  # retry: the service resumes from the newest complete checkpoint
EXIT_PAUSED = 4  # PauseJob honoured: a checkpoint was committed; ResumeJob continues from it
# How long a pausing worker gets, after SIGTERM, to finish its step and commit a checkpoint
# before it is killed (the job then pauses at its previous checkpoint).
PAUSE_GRACE_SECONDS = 600

PR_SET_PDEATHSIG = 1


class WorkerConfig(BaseModel):
    """What the service hands a worker attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    # Exactly one of these: what the job does.
    training: TrainingConfig | None = None
    export: ExportConfig | None = None
    evaluation: EvalConfig | None = None
    registry_target: str
    # Where eval workers send items (the OpenAI-compatible gateway), its key in GATEWAY_KEY_ENV.
    gateway_url: str = DEFAULT_GATEWAY_URL
    cache_dir: Path
    deepspeed_config: Path | None = None
    # The job's labels (services/common/labels.py), put on every version the job publishes, so
    # an adapter carries its owner like the job that made it.
    labels: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_kind(self) -> WorkerConfig:
        kinds = (self.training, self.export, self.evaluation)
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError("a worker config holds exactly one of training, export and evaluation")
        return self


def worker_args(job_dir: Path | str) -> list[str]:
    """The interpreter arguments that run the worker (after ``python`` or ``torchrun``)."""
    return ["-m", WORKER_MODULE, "--job-dir", str(job_dir)]


def launch_command(python: str, job_dir: Path | str, num_gpus: int) -> list[str]:
    """The command of one attempt: the worker itself, or torchrun with a rank per GPU."""
    if num_gpus <= 1:
        return [python, *worker_args(job_dir)]
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={num_gpus}",
        # torchrun's agent SIGKILLs its ranks 30 s after it got SIGTERM unless told otherwise:
        # a pausing job's ranks need the grace its runner gives it to commit their checkpoint.
        f"--shutdown-timeout={PAUSE_GRACE_SECONDS}",
        *worker_args(job_dir),
    ]


def write_worker_config(config: WorkerConfig, job_dir: Path) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    return job_dir


def read_worker_config(job_dir: Path) -> WorkerConfig:
    """In the worker: the config from the environment (Kubernetes: the service's volume is not
    shared) or the job folder, with the DeepSpeed config written where the recipe reads it."""
    raw = os.environ.get(CONFIG_ENV) or (job_dir / CONFIG_FILE).read_text()
    config = WorkerConfig.model_validate_json(raw)
    job_dir.mkdir(parents=True, exist_ok=True)
    if deepspeed := os.environ.get(DEEPSPEED_ENV):
        path = job_dir / DEEPSPEED_FILE
        path.write_text(deepspeed)
        config = config.model_copy(update={"deepspeed_config": path})
    return config


def worker_attempt() -> int:
    """This attempt's number (the service counts them; 1 where no runner said)."""
    raw = os.environ.get(ATTEMPT_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def emit(kind: str, **fields: Any) -> None:
    """Send one event to the service. Under torchrun only rank 0 reports."""
    if not is_rank_zero():
        return
    print(EVENT_PREFIX + json.dumps({"type": kind, **fields}), flush=True)


def parse_event_line(line: str) -> dict[str, Any] | None:
    """The event a worker stdout line carries, or None for a plain log line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX) :])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "type" in event else None


def exit_for(exc: TuneplexError) -> NoReturn:
    """End the worker for ``exc``: the registry being down is transient, so that exits as a
    crash (the service retries); any other domain error is the job's failure, reported."""
    if isinstance(exc, Unavailable):
        print(f"registry unavailable: {exc.message}", file=sys.stderr)
        sys.exit(EXIT_CRASH)
    emit(
        "failed",
        code=exc.code or type(exc).__name__.lower(),
        message=exc.message,
        param=exc.param or "",
    )
    sys.exit(EXIT_DOMAIN_ERROR)


def bind_to_parent() -> None:
    """In the worker: get SIGKILL when the service that started it dies (Linux only), so the
    restarted service resumes it from its last checkpoint instead of leaving an orphan nobody
    reads. Set here rather than in a ``preexec_fn``: that would run Python between fork and
    exec in a process full of gRPC threads, which aborts the child now and then."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The service may have died before prctl: then nobody reads us. (Under torchrun the parent
    # is torchrun, so only a direct child checks.)
    if "RANK" not in os.environ and os.getppid() != int(parent):
        os._exit(1)
