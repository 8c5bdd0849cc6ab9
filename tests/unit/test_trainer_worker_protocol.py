"""The service <-> worker contract: event lines, exit codes, the config hand-over, and that the
service side never loads the ML stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.trainer.export_spec import ExportConfig
from services.trainer.runners.local import worker_command
from services.trainer.worker.protocol import (
    CONFIG_ENV,
    DEEPSPEED_ENV,
    EXIT_CRASH,
    EXIT_DOMAIN_ERROR,
    WorkerConfig,
    emit,
    exit_for,
    parse_event_line,
    read_worker_config,
    write_worker_config,
)

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path) -> WorkerConfig:
    export = ExportConfig(adapter="a@1", output_name="m", base_model="b@1")
    return WorkerConfig(job_id="j", export=export, registry_target="x:1", cache_dir=tmp_path)


def test_an_emitted_event_parses_back_and_log_lines_do_not(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    emit("progress", step=3, loss=1.25)
    [line] = capsys.readouterr().out.splitlines()
    assert parse_event_line(line) == {"type": "progress", "step": 3, "loss": 1.25}
    assert parse_event_line("step 3 loss 1.25") is None
    assert parse_event_line(line[:-1]) is None  # truncated JSON is log, not a crash
    assert parse_event_line(line.split("{")[0] + '{"step": 3}') is None  # no type


def test_only_rank_zero_reports(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    emit("log", message="hello")
    assert capsys.readouterr().out == ""


def test_a_domain_error_is_reported_and_exits_with_the_no_retry_code(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as exited:
        exit_for(FailedPrecondition("base gone", param="export.adapter", code="base_gone"))
    assert exited.value.code == EXIT_DOMAIN_ERROR
    event = parse_event_line(capsys.readouterr().out.strip())
    assert event == {
        "type": "failed",
        "code": "base_gone",
        "message": "base gone",
        "param": "export.adapter",
    }
    with pytest.raises(SystemExit):
        exit_for(InvalidArgument("bad"))
    assert parse_event_line(capsys.readouterr().out.strip())["code"] == "invalidargument"


def test_the_registry_being_down_exits_as_a_crash_so_the_service_retries(capsys):
    with pytest.raises(SystemExit) as exited:
        exit_for(Unavailable("connection refused"))
    assert exited.value.code == EXIT_CRASH != EXIT_DOMAIN_ERROR
    captured = capsys.readouterr()
    assert captured.out == "" and "registry unavailable" in captured.err


def test_the_worker_reads_the_config_the_service_wrote(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv(DEEPSPEED_ENV, raising=False)
    config = _config(tmp_path)
    job_dir = write_worker_config(config, tmp_path / "job")
    assert read_worker_config(job_dir) == config


def test_on_kubernetes_the_config_and_deepspeed_come_in_the_environment(tmp_path, monkeypatch):
    config = _config(tmp_path)
    monkeypatch.setenv(CONFIG_ENV, config.model_dump_json())
    monkeypatch.setenv(DEEPSPEED_ENV, json.dumps({"zero_optimization": {"stage": 2}}))
    read = read_worker_config(tmp_path / "pod-job")
    assert read.job_id == "j" and read.export == config.export
    assert json.loads(read.deepspeed_config.read_text())["zero_optimization"]["stage"] == 2


def test_the_local_runner_launches_the_worker_package(tmp_path):
    assert worker_command(tmp_path, 1, 0)[1:] == [
        "-m",
        "services.trainer.worker",
        "--job-dir",
        str(tmp_path),
    ]
    assert (REPO / "services" / "trainer" / "worker" / "__main__.py").is_file()
    torchrun = worker_command(tmp_path, 2, 2)
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    assert torchrun[-4:] == ["-m", "services.trainer.worker", "--job-dir", str(tmp_path)]
    # torchrun would SIGKILL its ranks 30 s into a pause's checkpoint save otherwise.
    from services.trainer.worker.protocol import PAUSE_GRACE_SECONDS

    assert f"--shutdown-timeout={PAUSE_GRACE_SECONDS}" in torchrun


SERVICE_PROCESS = """
import sys, tempfile
from pathlib import Path
from services.trainer.main import build_runner
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobStore
from services.trainer.supervisor import JobSupervisor
from services.trainer.queue import JobQueue
from services.trainer.service import TrainerServicer
from services.trainer.admission import Admission
from services.trainer.artifacts import RegistryPullCache
from services.trainer.device import detect_device
from services.client.registry import RegistryClient
import services.trainer.runners.kubernetes

work = Path(tempfile.mkdtemp())
settings = TrainerSettings(home=work)
store = JobStore(work / "jobs.sqlite")
registry = RegistryClient("127.0.0.1:1")
admission = Admission(RegistryPullCache(registry, work / "cache"), detect_device(), "local")
for runner in ("local", "kubernetes"):
    build_runner(settings.model_copy(update={"runner": runner}), store)
supervisor = JobSupervisor(store, build_runner(settings, store), work_dir=work,
    registry_target="127.0.0.1:1", max_attempts=1, cancel_grace_seconds=1.0)
TrainerServicer(store, admission, JobQueue(supervisor.run, 1), supervisor)
heavy = sorted(m for m in ("torch", "transformers", "peft", "trl", "datasets") if m in sys.modules)
recipes = sorted(m for m in sys.modules if m.startswith("services.trainer.recipes"))
print(heavy, recipes)
"""


def test_the_trainer_service_process_never_loads_the_ml_stack():
    done = subprocess.run(
        [sys.executable, "-c", SERVICE_PROCESS],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[] []"
