"""The demo's job spec, now built from its settings by name, is byte for byte the one it sent
before: the demo's idempotency key hashes it, so an unchanged run is still reused."""

from __future__ import annotations

from pathlib import Path

from demo.story import DemoConfig, training_spec
from services.common.stubs import trainer_pb2


def test_the_demo_sends_the_spec_it_always_sent():
    cfg = DemoConfig(home=Path("/nonexistent"), bf16=True)
    before = trainer_pb2.TrainingSpec(
        base_model="smollm2-135m-instruct",
        dataset="shop-sql@1",
        method=trainer_pb2.METHOD_LORA,
        output_name="sql-lora",
        lora=trainer_pb2.LoraConfig(r=16, alpha=32),
        hyperparameters=trainer_pb2.Hyperparameters(
            max_steps=400,
            learning_rate=2e-3,
            lr_scheduler=trainer_pb2.LR_SCHEDULER_COSINE,
            precision=trainer_pb2.PRECISION_BF16,
            batch_size=4,
            max_seq_length=256,
            seed=0,
            save_steps=100,
        ),
    )
    spec = training_spec(cfg, "shop-sql@1")
    assert spec.SerializeToString(deterministic=True) == before.SerializeToString(
        deterministic=True
    )
