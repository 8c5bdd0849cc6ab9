"""The trainer through its gRPC API with the real registry: a real LoRA job on SmolLM2-135M on
CPU that survives a SIGKILLed worker and a SIGKILLed service, cancel, idempotency, bad input.

One job carries several assertions (resume after each fault, loss, publishing) because each
training run costs real CPU minutes on the shared 2-core machines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.stubs import trainer_pb2
from services.trainer.worker.protocol import parse_event_line
from tests.helpers.sample_data import chat_examples, write_jsonl
from tests.helpers.trainer_process import TrainerServer, start_trainer, wait_for_final

pytestmark = pytest.mark.integration

STEPS = 30
SAVE_EVERY = 10


def spec(**overrides) -> trainer_pb2.TrainingSpec:
    hp = dict(
        max_steps=STEPS, batch_size=4, max_seq_length=128, learning_rate=5e-4, save_steps=SAVE_EVERY
    )
    hp.update(overrides.pop("hp", {}))
    fields = dict(
        base_model="smollm2-135m-instruct",
        dataset="trainer-caps",
        output_name="caps-lora",
        lora=trainer_pb2.LoraConfig(r=8),
    )
    fields.update(overrides)
    return trainer_pb2.TrainingSpec(**fields, hyperparameters=trainer_pb2.Hyperparameters(**hp))


@pytest.fixture(scope="module")
def registry(registry_with_base_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("trainer-data")
    long_prompt = [
        {
            "messages": [
                {"role": "user", "content": "word " * 400},
                {"role": "assistant", "content": "ok"},
            ]
        }
    ]
    with RegistryClient(registry_with_base_model.target) as client:
        client.push("dataset", "trainer-caps", write_jsonl(chat_examples(64), data / "caps.jsonl"))
        client.push(
            "dataset", "trainer-caps-val", write_jsonl(chat_examples(8, seed=1), data / "val.jsonl")
        )
        client.push("dataset", "trainer-too-long", write_jsonl(long_prompt, data / "long.jsonl"))
    return registry_with_base_model


@pytest.fixture(scope="module")
def trainer(registry, tmp_path_factory):
    server = start_trainer(tmp_path_factory.mktemp("trainer-home"), registry.target)
    try:
        yield server
    finally:
        server.stop()


def worker_pids(server: TrainerServer) -> list[int]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p.pid for p in children if "services.trainer.worker" in " ".join(p.cmdline())]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_lora_job_resumes_after_worker_and_service_kills_and_publishes(
    trainer, registry, base_model_dir, tmp_path
):
    client = TrainerClient(trainer.target)
    main_spec = spec(validation_dataset="trainer-caps-val", hp=dict(eval_steps=15))
    job = client.create_job(main_spec, idempotency_key="main-job")
    assert job.state == trainer_pb2.JOB_STATE_QUEUED
    assert job.estimated_peak_memory_bytes > 0
    assert client.create_job(main_spec, idempotency_key="main-job").id == job.id

    events: list[trainer_pb2.JobEvent] = []
    faults_done: list[str] = []
    while True:
        try:
            after = events[-1].sequence if events else 0
            for event in client.stream_events(job.id, after_sequence=after):
                events.append(event)
                if event.WhichOneof("kind") != "checkpoint_saved":
                    continue
                step = event.checkpoint_saved.step
                if step == SAVE_EVERY and not faults_done:
                    (pid,) = worker_pids(trainer)
                    os.kill(pid, signal.SIGKILL)
                    faults_done.append("worker")
                elif step == 2 * SAVE_EVERY and faults_done == ["worker"]:
                    trainer.kill()  # the worker dies with it (PDEATHSIG)
                    faults_done.append("service")
                    trainer.start()
                    client.close()
                    client = TrainerClient(trainer.target)
                    break
            else:
                break
        except Unavailable:  # the stream broke under the service kill
            assert faults_done == ["worker", "service"]
    job = client.get_job(job.id)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job
    assert faults_done == ["worker", "service"]
    assert job.attempt == 3
    sequences = [e.sequence for e in events]
    assert sequences == list(range(1, len(events) + 1)), "a resumed stream repeats nothing"

    # Each attempt's first step follows the last complete checkpoint: no restart from step 1.
    first_steps, running = [], False
    for e in events:
        kind = e.WhichOneof("kind")
        if kind == "state_changed":
            running = e.state_changed.state == trainer_pb2.JOB_STATE_RUNNING
        elif kind == "progress" and running:
            first_steps.append(e.progress.step)
            running = False
    assert first_steps == [1, SAVE_EVERY + 1, 2 * SAVE_EVERY + 1]
    steps = [e.progress.step for e in events if e.WhichOneof("kind") == "progress"]
    assert sorted(set(steps)) == list(range(1, STEPS + 1))
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert any(f"resuming from the checkpoint at step {SAVE_EVERY}" in m for m in logs), logs
    assert any("service restarted" in m for m in logs), logs
    assert [e.eval.step for e in events if e.WhichOneof("kind") == "eval"] == [15, 30]

    losses = [e.progress.loss for e in events if e.WhichOneof("kind") == "progress"]
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss did not fall: first {first:.3f}, last five {last:.3f}"
    assert job.metrics["eval_loss"] < job.metrics["first_train_loss"]
    assert [c.step for c in client.list_checkpoints(job.id)] == [10, 20, 30]

    # Published: a PEFT adapter of the pinned base model, with report, curve and lineage.
    name, version = job.output.split("@")
    assert name == "caps-lora"
    with RegistryClient(registry.target) as reg:
        published = reg.pull("adapter", job.output, tmp_path / "adapter")
    assert published.lineage.job_id == job.id
    assert published.lineage.base_model == "smollm2-135m-instruct@1"
    assert published.lineage.dataset == "trainer-caps@1"
    assert published.lineage.metrics["train_loss"] == pytest.approx(job.metrics["train_loss"])
    report = json.loads((tmp_path / "adapter" / "training_report.json").read_text())
    assert report["dataset_sha256"] and report["hardware"]["device"] == "cpu"
    assert report["metrics"]["peak_memory_bytes"] > 0 and report["steps"] == STEPS
    assert (tmp_path / "adapter" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    # What users download names the base by its registry ref, not the worker's cache folder.
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "smollm2-135m-instruct@1"
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "smollm2-135m-instruct@1" in card and str(trainer.home) not in card

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "adapter weights were trained"
    client.close()

    # A worker killed after the registry committed its push, but before it reported, is run
    # again: the retry finds the version its job published instead of training and pushing a
    # second one.
    retry = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.trainer.worker",
            "--job-dir",
            str(trainer.home / "trainer" / "jobs" / job.id),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**trainer.env},
    )
    assert retry.returncode == 0, retry.stderr[-2000:]
    emitted = [parse_event_line(line) for line in retry.stdout.splitlines()]
    published_events = [e for e in emitted if e and e["type"] == "published"]
    assert [e["output"] for e in published_events] == [job.output]
    assert not any(e and e["type"] == "progress" for e in emitted), "the retry trained again"
    with RegistryClient(registry.target) as reg:
        assert [v.version for v in reg.versions("adapter", "caps-lora")] == [int(version)]


def test_published_version_holds_tensorboard_events_and_compares(registry, tmp_path, monkeypatch):
    """The version the main job above published (no second training run: CPU minutes)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from typer.testing import CliRunner

    from services.client.cli.app import app

    with RegistryClient(registry.target) as reg:
        try:
            reg.pull("adapter", "caps-lora@1", tmp_path / "adapter")
        except NotFound:
            pytest.fail(
                "caps-lora@1 is missing: the main job test above publishes it (run the "
                "module, not this test alone)"
            )
        dataset = reg.resolve("dataset", "trainer-caps@1")
    report = json.loads((tmp_path / "adapter" / "training_report.json").read_text())

    # (a) `tensorboard --logdir runs` sees the loss of every step once, although three
    # attempts (two of them killed) each wrote an event file: a resumed attempt's file hides
    # what the killed one logged past its checkpoint.
    runs = tmp_path / "adapter" / "runs"
    assert len(list(runs.glob("events.out.tfevents.*"))) == 3
    events = EventAccumulator(str(runs))
    events.Reload()
    train = [(s.step, s.value) for s in events.Scalars("train/loss")]
    assert [step for step, _ in train] == list(range(1, STEPS + 1))
    logged = report["loss_history"]["train"]
    assert [step for step, _ in logged] == list(range(1, STEPS + 1))
    assert [v for _, v in train] == pytest.approx([v for _, v in logged], rel=1e-5)
    assert [s.step for s in events.Scalars("eval/loss")] == [15, 30]
    texts = events.Tags()["tensors"]  # the Trainer's arguments hold the worker's local paths
    assert not [t for t in texts if t.startswith(("args", "model_config"))], texts

    # (b) `tuneplex experiments compare` on it, with the loss curve drawn.
    monkeypatch.setenv("TUNEPLEX_REGISTRY_TARGET", registry.target)
    png = tmp_path / "loss.png"
    result = CliRunner().invoke(app, ["experiments", "compare", "caps-lora@1", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct@1" in result.output
    assert dataset.manifest.sha256[:12] in result.output and "64 examples" in result.output
    assert f"{report['metrics']['train_loss']:.4f}" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    missing = CliRunner().invoke(app, ["experiments", "compare", "no-such-adapter"])
    assert missing.exit_code == 2 and "no adapter or model named" in missing.output


def test_cancel_stops_the_worker_within_seconds_and_keeps_checkpoints(trainer):
    with TrainerClient(trainer.target) as client:
        job = client.create_job(
            spec(output_name="caps-cancel", hp=dict(max_steps=500, save_steps=2))
        )
        for event in client.stream_events(job.id):
            if event.WhichOneof("kind") == "checkpoint_saved":
                break
        pids = worker_pids(trainer)
        asked = time.monotonic()
        client.cancel_job(job.id)
        job = wait_for_final(client, job.id, timeout=10)
        assert time.monotonic() - asked < 10
        assert job.state == trainer_pb2.JOB_STATE_CANCELLED
        assert pids and not any(alive(p) for p in pids)
        assert client.list_checkpoints(job.id), "checkpoints are kept after cancel"
        assert client.cancel_job(job.id).state == trainer_pb2.JOB_STATE_CANCELLED


def test_same_idempotency_key_twice_makes_one_job(trainer):
    with TrainerClient(trainer.target) as client:
        first = client.create_job(spec(output_name="caps-idem"), idempotency_key="idem-1")
        # The same request with a default spelled out is the same request (AIP-155).
        same = spec(output_name="caps-idem", hp=dict(seed=42))
        assert client.create_job(same, idempotency_key="idem-1").id == first.id
        jobs_before = len(client.list_jobs())
        other_lr = spec(output_name="caps-idem", hp=dict(learning_rate=1e-3))
        with pytest.raises(AlreadyExists) as refused:
            client.create_job(other_lr, idempotency_key="idem-1")
        assert refused.value.code == "idempotency_key_reused"
        assert first.id in refused.value.message and "learning_rate" in refused.value.message
        assert len(client.list_jobs()) == jobs_before  # no second job
        same_key = [j for j in client.list_jobs() if j.idempotency_key == "idem-1"]
        assert [j.id for j in same_key] == [first.id]
        client.cancel_job(first.id)
        wait_for_final(client, first.id, timeout=10)


@pytest.mark.parametrize(
    ("training", "error", "says"),
    [
        (spec(hp=dict(batch_size=-1)), InvalidArgument, "batch_size"),
        (spec(output_name="Bad Name!"), InvalidArgument, "output_name"),
        (
            spec(lora=trainer_pb2.LoraConfig(target_modules=["os.system"])),
            InvalidArgument,
            "target module",
        ),
        (spec(hp=dict(eval_steps=5)), InvalidArgument, "validation_dataset"),
        (spec(dataset="no-such-dataset"), NotFound, "push it first"),
        (spec(base_model="no-such-model"), NotFound, "no-such-model"),
        (spec(method=trainer_pb2.METHOD_QLORA), FailedPrecondition, "use method lora on CPU"),
        (spec(hp=dict(precision=trainer_pb2.PRECISION_FP16)), FailedPrecondition, "fp32"),
        (spec(hp=dict(batch_size=4096, max_seq_length=8192)), FailedPrecondition, "GiB short"),
    ],
)
def test_bad_specs_are_refused_with_the_fix(trainer, training, error, says):
    with TrainerClient(trainer.target) as client, pytest.raises(error) as caught:
        client.create_job(training)
    assert says in caught.value.message


def test_memory_estimate_names_its_terms(trainer):
    with TrainerClient(trainer.target) as client:
        est = client.estimate_memory(spec(hp=dict(batch_size=4096, max_seq_length=8192)))
    assert est.peak_bytes > est.available_bytes > 0
    assert {t.name for t in est.terms} >= {"base_weights", "activations", "logits"}


def test_estimate_and_create_agree_on_the_largest_spec_that_validates(trainer):
    # Its activations once overflowed the int64 of the response: INTERNAL instead of an answer.
    huge = spec(hp=dict(batch_size=65536, max_seq_length=1_048_576))
    with TrainerClient(trainer.target) as client:
        est = client.estimate_memory(huge)
        assert est.peak_bytes > est.available_bytes > 0
        with pytest.raises(FailedPrecondition, match="GiB short"):
            client.create_job(huge)


def test_dataset_without_assistant_tokens_in_reach_fails_with_structured_error(trainer):
    with TrainerClient(trainer.target) as client:
        job = client.create_job(spec(dataset="trainer-too-long", output_name="never"))
        job = wait_for_final(client, job.id, timeout=120)
    assert job.state == trainer_pb2.JOB_STATE_FAILED
    assert job.error.code == "dataset_invalid"
    assert job.error.param == "training.hyperparameters.max_seq_length"
    assert "raise max_seq_length" in job.error.message
    assert job.attempt == 1, "a wrong dataset is not retried"


def test_cli_lists_shows_and_watches_jobs(trainer, monkeypatch):
    from typer.testing import CliRunner

    from services.client.cli.app import app

    monkeypatch.setenv("TUNEPLEX_TRAINER_TARGET", trainer.target)
    with TrainerClient(trainer.target) as client:
        job = client.create_job(spec(output_name="caps-cli", hp=dict(max_steps=500)))
        client.cancel_job(job.id)
        wait_for_final(client, job.id, timeout=10)
    runner = CliRunner()
    listed = runner.invoke(app, ["jobs", "list", "--state", "cancelled"])
    assert listed.exit_code == 0 and job.id in listed.output
    shown = runner.invoke(app, ["jobs", "show", job.id])
    assert shown.exit_code == 0 and '"outputName": "caps-cli"' in shown.output
    watched = runner.invoke(app, ["jobs", "watch", job.id])  # replays, then ends with the job
    assert watched.exit_code == 0 and f"{job.id}: cancelled" in watched.output
    bad = runner.invoke(
        app, ["jobs", "create", "--dataset", "trainer-caps", "-o", "x", "--method", "qlora"]
    )
    assert bad.exit_code == 2 and "use method lora on CPU" in bad.output
    missing = runner.invoke(app, ["jobs", "show", "job-nope"])
    assert missing.exit_code == 2
