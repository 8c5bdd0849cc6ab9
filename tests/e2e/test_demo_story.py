"""The README story (`make demo`) at a smaller scale: import, start the three services, upload
the generated dataset, train `sql-lora` through the trainer, score base and adapter with eval
jobs through the gateway on the generated held-out split and on the hand-written questions,
promote `sql-lora@prod` through the eval gate, then `tuneplex stop`.

The same stack then shows the gate from the other side: a deliberately worse adapter (2 training
steps) is refused and the alias does not move, and a promotion over a resident holder warms the
candidate first, so the first request after the move does not pay a cold load.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import time

import httpx
import pytest
from rich.console import Console

from demo.shop_sql.generate import handwritten_examples
from demo.story import (
    ADAPTER,
    BASE_MODEL,
    EVAL_SET,
    HANDWRITTEN_SET,
    PROD,
    DemoConfig,
    ScoredModel,
    _targets,
    grader,
    print_report,
    run_demo,
    train_adapter,
)
from services.client import local_stack
from services.client.gateway import GatewayAdmin
from services.client.promotion import promote
from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient
from services.common.errors import FailedPrecondition
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

MODEL_VERSION_HEADER = "x-tuneplex-model-version"


def _chat(gateway: str, model: str) -> tuple[float, str]:
    """(seconds, the version that served) of one short greedy chat. Latency is not asserted: on
    2 CPU cores loading a LoRA costs 0.1-0.4 s against ~1 s for the request itself, so the
    gateway's own load metrics are what tells a warm serve from a cold one."""
    body = {"model": model, "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": "How many customers are there?"}]}
    start = time.perf_counter()
    resp = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=300)
    seconds = time.perf_counter() - start
    assert resp.status_code == 200, resp.text
    return seconds, resp.headers[MODEL_VERSION_HEADER]


def test_demo_story_end_to_end(tmp_path, base_model_dir, monkeypatch):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    # The import is its own test; reuse the session's copy instead of de-quantizing again.
    (home / "models" / BASE_MODEL).symlink_to(base_model_dir, target_is_directory=True)
    # One resident adapter per engine, so "not resident" is something the test can arrange.
    monkeypatch.setenv("TUNEPLEX_GATEWAY_MAX_LORAS", "1")
    monkeypatch.setenv("TUNEPLEX_GATEWAY_MAX_CPU_LORAS", "1")
    cfg = DemoConfig(
        home=home,
        registry_port=free_port(),
        trainer_port=free_port(),
        gateway_port=free_port(),
        # The adapter must beat the base model (which scores 0 here). Measured with
        # `demo.tune` at this size (fp32, 2 cores): batch 1 x 160 steps 2/16 held-out questions,
        # batch 4 x 40 steps 1/16 for about the same time: optimizer steps are what counts.
        train_examples=160,
        heldout_examples=16,
        max_steps=160,
        batch_size=1,
        bf16=False,
        max_tokens=64,
        examples_shown=2,
    )
    log = io.StringIO()
    registry, trainer, gateway = _targets(cfg)
    try:
        result = run_demo(cfg, Console(file=log, width=200))
        report = io.StringIO()
        print_report(cfg, result, Console(file=report, width=200))

        # --- the demo's own story -----------------------------------------------------
        assert result.adapter_ref.startswith(f"{ADAPTER}@")
        assert result.base.info.num_items == result.adapter.info.num_items == 16
        assert len(result.adapter.items) == 16 and all(
            "output_text" in item for item in result.adapter.items)
        # Learning: the adapter answers more held-out questions correctly than the base model,
        # counted from the registry records' per-question results, and the score the gate
        # compares (parsed by the registry from the record's summary) is that count.
        base_right, adapter_right = (_correct(s) for s in (result.base, result.adapter))
        assert adapter_right > base_right, log.getvalue()
        assert result.adapter.accuracy == pytest.approx(adapter_right / 16)
        assert result.base.accuracy == pytest.approx(base_right / 16)
        text = report.getvalue()
        assert (
            f"execution accuracy: {BASE_MODEL} {result.base.accuracy:.2f}, "
            f"{ADAPTER} {result.adapter.accuracy:.2f} (16 held-out questions)"
        ) in text
        assert "curl http://127.0.0.1:" in text

        # The hand-written questions: a second eval set, scored for both models. Not asked to
        # beat the base model there: this adapter trains for minutes on 160 examples.
        n_hw = len(handwritten_examples())
        base_hw, adapter_hw = result.base_handwritten, result.adapter_handwritten
        assert result.handwritten_set and result.handwritten_set.startswith(f"{HANDWRITTEN_SET}@")
        assert base_hw is not None and adapter_hw is not None
        for scored in (base_hw, adapter_hw):
            assert scored.info.num_items == n_hw and len(scored.items) == n_hw
            assert all("output_text" in item for item in scored.items)
        assert (
            f"hand-written: {BASE_MODEL} {base_hw.accuracy:.2f}, "
            f"{ADAPTER} {adapter_hw.accuracy:.2f} ({n_hw} questions written by hand)"
        ) in text
        assert result.eval_set in text and result.handwritten_set in text  # a column each
        with RegistryClient(registry) as client:
            # Both results are registry records linked to the exact model and eval-set versions.
            record = client.resolve("evaluation", result.adapter.record)
            assert record.lineage.adapter == result.adapter_ref
            assert record.lineage.eval_set == result.eval_set
            base_record = client.resolve("evaluation", result.base.record)
            assert base_record.lineage.base_model == result.base.model
            record = client.resolve("evaluation", adapter_hw.record)
            assert record.lineage.adapter == result.adapter_ref
            assert record.lineage.eval_set == result.handwritten_set
            base_record = client.resolve("evaluation", base_hw.record)
            assert base_record.lineage.base_model == result.base.model
            assert base_record.lineage.eval_set == result.handwritten_set
            assert client.resolve("adapter", f"{ADAPTER}@{PROD}").version == int(
                result.adapter_ref.split("@")[1])

        # --- a worse candidate is refused; the alias stays -------------------------------
        weak_ref = train_adapter(dataclasses.replace(cfg, max_steps=2, learning_rate=1e-5),
                                 home / "demo" / "shop-sql", lambda msg: None)
        with RegistryClient(registry) as reg, TrainerClient(trainer) as tr:
            with pytest.raises(FailedPrecondition) as refused:
                promote(reg, tr, None, kind="adapter", ref=weak_ref, alias=PROD,
                        eval_set=EVAL_SET, graders=[grader()], margin=0.0, say=lambda m: None)
            assert refused.value.code == "promotion_refused"
            assert weak_ref in refused.value.message and result.adapter_ref in refused.value.message
            assert f"{result.adapter.accuracy:.2f}" in refused.value.message
            assert client_alias(reg, PROD) == int(result.adapter_ref.split("@")[1])

            # --- promotion over a resident holder is warm ----------------------------------
            # The weak version holds `canary` and is the engine's one resident adapter; the
            # good one is not resident, so serving it would be a load (measured once here).
            good, weak = result.adapter_ref, weak_ref
            reg.set_alias("adapter", ADAPTER, "canary", int(weak.split("@")[1]))
            _chat(gateway, weak)
            loads = _loads(gateway)
            _, served = _chat(gateway, good)  # a cold load: `good` in, `weak` out
            assert served == good
            assert _loads(gateway) == loads + 1
            _chat(gateway, f"{ADAPTER}@canary")  # `weak` resident again, `good` not
            admin = GatewayAdmin(gateway)
            try:
                moved = promote(reg, tr, admin, kind="adapter", ref=good, alias="canary",
                                eval_set=EVAL_SET, graders=[grader()], margin=0.0,
                                say=lambda m: None)
            finally:
                admin.close()
            assert moved.previous_version == int(weak.split("@")[1])
            assert _metric(gateway, "gateway_adapter_loads_total", result="warmed") == 1
            loads = _loads(gateway)
            _, served = _chat(gateway, f"{ADAPTER}@canary")
        # The first request after the move is served by the new version with nothing loaded:
        # the promotion warmed it while the old one still held the alias.
        assert served == good
        assert _loads(gateway) == loads
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "services.client.cli", "stop", "--home", str(home)],
            capture_output=True,
            text=True,
        )
    assert stopped.returncode == 0, stopped.stderr
    for name in ("registry", "trainer", "gateway"):
        assert local_stack.running_pid(home, name) is None


def _correct(scored: ScoredModel) -> int:
    """Questions the `sql_execution` grader passed, from the record's `results.jsonl`."""
    return sum(item["score"] >= 1.0 for item in scored.items)


def _metric(gateway: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


def _loads(gateway: str) -> float:
    """vLLM adapter loads the gateway has done (the `load` phase of a cold load)."""
    return _metric(gateway, "gateway_adapter_load_duration_seconds_count", phase="load")


def client_alias(client: RegistryClient, alias: str) -> int:
    return client.get("adapter", ADAPTER).aliases[alias]
