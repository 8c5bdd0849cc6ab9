"""Export jobs through the real trainer and registry: `tuneplex export` merges a real LoRA
adapter into SmolLM2-135M, `tuneplex models pull` writes a folder that transformers loads and
that reproduces base + adapter; a worker SIGKILLed mid-upload leaves no version; bad input gets
the right code and message."""

from __future__ import annotations

import os
import signal

import pytest

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.stubs import trainer_pb2
from tests.helpers.lora import make_lora_adapter
from tests.helpers.trainer_process import TrainerServer, start_trainer, wait_for_final

pytestmark = pytest.mark.integration

BASE_REF = "smollm2-135m-instruct@1"


@pytest.fixture(scope="module")
def adapter_dir(registry_with_base_model, base_model_dir, tmp_path_factory):
    """A real LoRA adapter whose perturbed B weights change greedy outputs, as `exp-lora@1`."""
    folder = make_lora_adapter(base_model_dir, tmp_path_factory.mktemp("exp-lora"), seed=11)
    with RegistryClient(registry_with_base_model.target) as client:
        client.push("adapter", "exp-lora", folder, base_model=BASE_REF)
    return folder


@pytest.fixture(scope="module")
def trainer(registry_with_base_model, adapter_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("export-trainer")
    server = start_trainer(home, registry_with_base_model.target)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def registry(registry_with_base_model):
    with RegistryClient(registry_with_base_model.target) as client:
        yield client


def worker_pid(server: TrainerServer) -> int:
    import psutil

    for child in psutil.Process(server.process.pid).children(recursive=True):
        if "services.trainer.worker" in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError("no worker running")



def test_cli_export_matches_base_plus_adapter_and_pulls_as_a_usable_folder(
    trainer, registry, registry_with_base_model, base_model_dir, adapter_dir, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from services.client.cli.app import app
    from tests.helpers import merge_check

    monkeypatch.setenv("TUNEPLEX_TRAINER_TARGET", trainer.target)
    monkeypatch.setenv("TUNEPLEX_REGISTRY_TARGET", registry_with_base_model.target)
    runner = CliRunner()
    command = ["export", "exp-lora", "--name", "exp-merged", "--dtype", "fp32", "--ollama"]
    exported = runner.invoke(app, [*command, "--watch"])
    assert exported.exit_code == 0, exported.output
    assert "succeeded -> exp-merged@1" in exported.output

    version = registry.resolve("model", "exp-merged")
    assert version.model.merged_from_adapter == "exp-lora@1"
    assert (version.lineage.adapter, version.lineage.base_model) == ("exp-lora@1", BASE_REF)
    assert version.lineage.job_id.startswith("job-")
    assert version.model.dtype == "float32"
    assert "export of exp-lora@1" in version.model.source
    assert {"exp-lora@1", BASE_REF} <= {
        f"{v.name}@{v.version}" for v in registry.lineage("model", "exp-merged")
    }

    dest = tmp_path / "exp-merged"
    pulled = runner.invoke(app, ["models", "pull", "exp-merged", str(dest)])
    assert pulled.exit_code == 0, pulled.output
    files = {p.name for p in dest.iterdir()}
    assert {"config.json", "tokenizer.json", "Modelfile", "export_report.json"} <= files
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert "TEMPLATE" in (dest / "Modelfile").read_text()

    # The pulled folder is a plain model: transformers loads it without PEFT, and it answers
    # as base + adapter did, unmerged, in the same precision.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(dest)
    assert tokenizer.chat_template  # the chat template came along
    merged = merge_check.load_fp32(dest)
    reference = merge_check.base_plus_adapter(base_model_dir, adapter_dir)
    assert merge_check.max_logit_diff(merged, reference, tokenizer) < 1e-3
    expected = merge_check.greedy(reference, tokenizer)
    assert merge_check.greedy(merged, tokenizer) == expected
    with reference.disable_adapter():
        assert merge_check.greedy(reference, tokenizer) != expected, "the adapter changes nothing"


def test_worker_killed_mid_upload_leaves_no_version_and_the_retry_publishes(trainer, registry):
    client = TrainerClient(trainer.target)
    job = client.create_export("exp-lora@1", "exp-crash", idempotency_key="exp-crash")
    assert client.create_export("exp-lora@1", "exp-crash", idempotency_key="exp-crash").id == job.id
    assert job.spec.export.adapter == "exp-lora@1"  # pinned
    killed = False
    for event in client.stream_events(job.id):
        if event.WhichOneof("kind") == "log" and event.log.message.startswith("publishing"):
            os.kill(worker_pid(trainer), signal.SIGKILL)  # the upload is streaming now
            killed = True
            break
    assert killed
    with pytest.raises(NotFound):
        registry.resolve("model", "exp-crash")
    job = wait_for_final(client, job.id, timeout=300)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert (job.output, job.attempt) == ("exp-crash@1", 2)
    assert [v.version for v in registry.versions("model", "exp-crash")] == [1]
    client.close()


def test_export_of_an_adapter_whose_base_model_is_gone_is_failed_precondition(
    trainer, registry, base_model_dir, adapter_dir
):
    registry.push("model", "exp-doomed-base", base_model_dir)
    registry.push("adapter", "exp-orphan", adapter_dir, base_model="exp-doomed-base@1")
    registry.delete("model", "exp-doomed-base", force=True)
    with TrainerClient(trainer.target) as client, pytest.raises(FailedPrecondition) as caught:
        client.create_export("exp-orphan", "exp-orphan-merged")
    assert "exp-doomed-base@1" in caught.value.message
    assert "no longer in the registry" in caught.value.message


@pytest.mark.parametrize(
    ("adapter", "name", "error", "says"),
    [
        ("exp-lora", "smollm2-135m-instruct", AlreadyExists, "model name"),
        ("exp-lora", "exp-lora", AlreadyExists, "adapter name"),
        ("no-such-lora", "whatever", NotFound, "push it first"),
        ("exp-lora", "Bad Name", InvalidArgument, "output_name"),
    ],
)
def test_bad_exports_are_refused_with_the_right_code(trainer, adapter, name, error, says):
    with TrainerClient(trainer.target) as client, pytest.raises(error) as caught:
        client.create_export(adapter, name)
    assert says in caught.value.message


def test_an_ia3_adapter_exports_through_the_trainer(trainer, registry, base_model_dir, tmp_path):
    """The trainer's admission takes the PEFT types a merge folds into plain weights (what the
    gateway's on-demand merges ask of it), and the merged model names its adapter."""
    from tests.helpers.peft_adapters import make_peft_adapter

    folder = make_peft_adapter("IA3", base_model_dir, tmp_path / "ia3", seed=5)
    registry.push("adapter", "exp-ia3", folder, base_model=BASE_REF)
    with TrainerClient(trainer.target) as client:
        job = wait_for_final(client, client.create_export("exp-ia3", "exp-ia3-merged").id, 300)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    merged = registry.resolve("model", "exp-ia3-merged")
    assert merged.model.merged_from_adapter == "exp-ia3@1"
