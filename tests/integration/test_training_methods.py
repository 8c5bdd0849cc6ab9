"""Methods ia3, loha and lokr for real: a 2-step job of each on SmolLM2-135M on the CPU through
the trainer's gRPC API and the session's registry. Each job succeeds and publishes an adapter
version the registry took as that PEFT type, whose weights hold that type's tensors (PEFT's
names, the shapes its feed-forward rule gives IA3) and moved away from PEFT's initialisation,
which is the identity for all three: training changed them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from services.common.peft_types import WEIGHT_MARKERS
from services.common.stubs import trainer_pb2
from tests.helpers.sample_data import chat_examples, write_jsonl
from tests.helpers.trainer_process import start_trainer, wait_for_final

pytestmark = pytest.mark.integration

METHODS = {
    "ia3": (trainer_pb2.METHOD_IA3, "IA3"),
    "loha": (trainer_pb2.METHOD_LOHA, "LOHA"),
    "lokr": (trainer_pb2.METHOD_LOKR, "LOKR"),
}
DATASET = "methods-capitals"


def method_spec(method: str) -> trainer_pb2.TrainingSpec:
    number, _ = METHODS[method]
    # IA3 takes no rank: it keeps its own targets (k_proj, v_proj, down_proj); LoHa and LoKr
    # adapt an attention and a feed-forward module at a small rank.
    lora = (
        trainer_pb2.LoraConfig()
        if method == "ia3"
        else trainer_pb2.LoraConfig(r=4, dropout=0.0, target_modules=["q_proj", "down_proj"])
    )
    return trainer_pb2.TrainingSpec(
        base_model="smollm2-135m-instruct",
        dataset=DATASET,
        output_name=f"methods-{method}",
        method=number,
        lora=lora,
        hyperparameters=trainer_pb2.Hyperparameters(
            max_steps=2,
            batch_size=2,
            max_seq_length=64,
            learning_rate=1e-2,  # large, so 2 steps move every adapter tensor visibly
            warmup_ratio=0.0,
        ),
    )


@pytest.fixture(scope="module")
def jobs(registry_with_base_model, tmp_path_factory):
    """The three jobs, created together (the trainer queues them), each to its final state."""
    data = tmp_path_factory.mktemp("methods-data")
    with RegistryClient(registry_with_base_model.target) as registry:
        registry.push("dataset", DATASET, write_jsonl(chat_examples(8), data / "chats.jsonl"))
    server = start_trainer(
        tmp_path_factory.mktemp("methods-trainer"), registry_with_base_model.target
    )
    client = TrainerClient(server.target)
    try:
        created = {m: client.create_job(method_spec(m)).id for m in METHODS}
        yield {m: wait_for_final(client, job_id, timeout=600) for m, job_id in created.items()}
    finally:
        client.close()
        server.stop()


def initial_value(method: str, name: str) -> float | None:
    """What PEFT initialises the tensor to, where it is a constant (the identity's part)."""
    if method == "ia3":
        return 1.0  # every scaling vector starts at ones
    if name.endswith("hada_w2_b") or name.endswith("lokr_w1"):
        return 0.0  # the factor that makes the initial update zero
    return None


@pytest.mark.parametrize("method", list(METHODS))
def test_the_job_publishes_an_adapter_of_its_peft_type(
    method, jobs, registry_with_base_model, tmp_path
):
    job = jobs[method]
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job
    assert job.output == f"methods-{method}@1"
    _, peft_type = METHODS[method]
    with RegistryClient(registry_with_base_model.target) as registry:
        version = registry.pull("adapter", job.output, tmp_path / "adapter")
    info = version.adapter
    assert info.peft_type == peft_type
    assert info.base_model == "smollm2-135m-instruct@1"
    if method == "ia3":
        assert set(info.target_modules) == {"k_proj", "v_proj", "down_proj"}
        assert (info.rank, info.alpha) == (0, 0.0)
    else:
        assert set(info.target_modules) == {"q_proj", "down_proj"}
        assert (info.rank, info.alpha) == (4, 8.0)  # alpha defaults to 2 x r

    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    kinds = {name.rsplit(".", 1)[-1] for name in weights}
    assert kinds and kinds <= set(WEIGHT_MARKERS[peft_type]), kinds
    # 30 layers x 2 or 3 adapted modules, each with its own tensors.
    assert len({name.rsplit(".", 1)[0] for name in weights}) == 30 * (3 if method == "ia3" else 2)
    if method == "ia3":
        # Attention modules are scaled at their output ([out, 1]); the MLP's down_proj, a
        # feed-forward module, at its input ([1, intermediate]).
        shapes = {name.split(".")[-2]: tuple(t.shape) for name, t in weights.items()}
        assert shapes == {"k_proj": (192, 1), "v_proj": (192, 1), "down_proj": (1, 1536)}
    constant = [(n, t, initial_value(method, n)) for n, t in weights.items()]
    moved = [not torch.all(t == start) for n, t, start in constant if start is not None]
    assert moved and all(moved), f"{method}: some tensors were not trained"
