"""A DoRA adapter, which vLLM cannot load at runtime, served by name with no manual export and no
restart: the gateway asks the session's trainer to merge it (an export job, fp32 as the engine
serves), starts an engine on demand for the merged model and answers through it; the official
openai client gets the same greedy answers as transformers gives for base + DoRA adapter,
unmerged, in fp32. The gateway has no base model of its own (it serves on demand only), waits
5 s for a model to be ready before it says 503 with `retry-after`, and stops an engine idle for
20 s."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from tests.e2e.conftest import BASE_REF
from tests.helpers import merge_check
from tests.helpers.gateway_process import start_gateway
from tests.helpers.lora import make_lora_adapter

pytestmark = pytest.mark.e2e

ADAPTER = "exp-dora"
MERGED = "exp-dora-v1-merged"  # the name the gateway's merge publishes (on_demand.merged_name)
PROMPTS = merge_check.PROMPTS[:3]
MAX_TOKENS = 8
WAIT_S, IDLE_S = 5, 20


@pytest.fixture(scope="module")
def dora_reference(registry_with_base_model, base_model_dir, tmp_path_factory):
    """transformers' greedy texts of base + the DoRA adapter `exp-dora@1`, pushed to the
    registry (and not merged by anyone)."""
    folder = make_lora_adapter(
        base_model_dir, tmp_path_factory.mktemp("exp-dora"), seed=21, use_dora=True
    )
    with RegistryClient(registry_with_base_model.target) as registry:
        registry.push("adapter", ADAPTER, folder, base_model=BASE_REF)

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
def on_demand_gateway(registry_with_base_model, trainer, dora_reference, tmp_path_factory):
    gw = start_gateway(
        tmp_path_factory.mktemp("on-demand-gateway"),
        registry_with_base_model.target,
        env={
            "TUNEPLEX_GATEWAY_BASE_MODELS": "[]",
            "TUNEPLEX_GATEWAY_TRAINER_TARGET": trainer.target,
            "TUNEPLEX_GATEWAY_ON_DEMAND_WAIT_S": str(WAIT_S),
            "TUNEPLEX_GATEWAY_ON_DEMAND_IDLE_S": str(IDLE_S),
        },
    )
    try:
        gw.wait_healthy(timeout=120)  # nothing to start: it serves on demand only
        yield gw
    finally:
        gw.stop()


def ask(client: openai.OpenAI, model: str, prompt: str):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )


def test_a_dora_adapter_is_served_by_name_through_a_merge_and_an_on_demand_engine(
    on_demand_gateway, dora_reference, registry_with_base_model, trainer
):
    gw = on_demand_gateway
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.api_key, max_retries=0, timeout=120)
    # The first request waits WAIT_S, then is told to come back: the merge takes longer.
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as early:
        ask(client, ADAPTER, PROMPTS[0])
    assert early.value.status_code == 503
    assert int(early.value.response.headers["retry-after"]) > 0
    assert WAIT_S <= time.monotonic() - started < WAIT_S + 30
    deadline = time.monotonic() + 900
    while True:  # as a client honouring retry-after would
        try:
            first = ask(client, ADAPTER, PROMPTS[0])
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503, exc
            assert time.monotonic() < deadline, "the merged model never became servable"
            time.sleep(2)
    assert first.model == f"{ADAPTER}@1"
    answers = [first.choices[0].message.content]
    answers += [ask(client, ADAPTER, p).choices[0].message.content for p in PROMPTS[1:]]
    assert answers == dora_reference

    # The merge is a registry model of its own, pinned to the adapter version; by its name it
    # is served by the same engine.
    with RegistryClient(registry_with_base_model.target) as registry:
        merged = registry.resolve("model", MERGED)
    assert merged.model.merged_from_adapter == f"{ADAPTER}@1"
    assert ask(client, MERGED, PROMPTS[0]).choices[0].message.content == dora_reference[0]
    assert gw.metric("gateway_on_demand_engine_starts_total") == 1
    assert gw.metric("gateway_adapter_merges_total", outcome="asked") >= 1
    # However many requests asked while it ran, the trainer merged the adapter once.
    with TrainerClient(trainer.target) as grpc_trainer:
        exports = [
            j
            for j in grpc_trainer.list_jobs()
            if j.spec.WhichOneof("kind") == "export" and j.spec.export.adapter == f"{ADAPTER}@1"
        ]
    assert len(exports) == 1 and exports[0].output == f"{MERGED}@1"

    # Idle past its TTL, the engine is stopped.
    idle_since = time.monotonic()
    while gw.metric("gateway_on_demand_engine_stops_total", reason="idle") < 1:
        assert time.monotonic() - idle_since < IDLE_S + 60, "the idle engine was not stopped"
        time.sleep(1)
    assert gw.metric("gateway_on_demand_engines") == 0
    health = httpx.get(f"{gw.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["engines"] == {}


def test_an_ia3_adapter_trained_elsewhere_is_served_by_name_the_same_way(
    on_demand_gateway, base_model_dir, registry_with_base_model, tmp_path
):
    """Another PEFT type a merge folds into plain weights, on the same path: pushed, asked by
    name, merged by the trainer, answered by an on-demand engine as PEFT's own unmerged IA3
    adapter answers (fp32, greedy), and not as the base does."""
    from transformers import AutoTokenizer

    from tests.helpers.peft_adapters import make_peft_adapter

    folder = make_peft_adapter("IA3", base_model_dir, tmp_path / "ia3", seed=3)
    with RegistryClient(registry_with_base_model.target) as registry:
        registry.push("adapter", "exp-ia3-served", folder, base_model=BASE_REF)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    reference = merge_check.base_plus_adapter(base_model_dir, folder)
    ids = merge_check.greedy(reference, tokenizer, PROMPTS[:1], MAX_TOKENS)
    with reference.disable_adapter():
        plain = merge_check.greedy(reference, tokenizer, PROMPTS[:1], MAX_TOKENS)
    assert plain != ids, "the IA3 adapter changes nothing"
    expected = tokenizer.decode(ids[0], skip_special_tokens=True)

    gw = on_demand_gateway
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.api_key, max_retries=0, timeout=120)
    deadline = time.monotonic() + 900
    while True:
        try:
            reply = ask(client, "exp-ia3-served", PROMPTS[0])
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503, exc  # merging, then starting: come back later
            assert time.monotonic() < deadline, "the IA3 adapter never became servable"
            time.sleep(2)
    assert reply.model == "exp-ia3-served@1"
    assert reply.choices[0].message.content == expected
