"""The README story (`make demo`) at a smaller scale: import, start the three services, upload
the generated dataset, train `sql-lora` through the trainer, evaluate base and adapter through
the gateway with the `openai` client, then `tuneplex stop`."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console

from demo.story import ADAPTER, BASE_MODEL, DemoConfig, print_report, run_demo
from services.client import local_stack
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def test_demo_story_end_to_end(tmp_path, base_model_dir):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    # The import is its own test; reuse the session's copy instead of de-quantizing again.
    (home / "models" / BASE_MODEL).symlink_to(base_model_dir, target_is_directory=True)
    cfg = DemoConfig(
        home=home,
        registry_port=free_port(),
        trainer_port=free_port(),
        gateway_port=free_port(),
        train_examples=96,
        heldout_examples=8,
        max_steps=6,
        batch_size=4,
        max_tokens=64,
        examples_shown=2,
    )
    log = io.StringIO()
    try:
        result = run_demo(cfg, Console(file=log, width=200))
        report = io.StringIO()
        print_report(cfg, result, Console(file=report, width=200))
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "services.client.cli", "stop", "--home", str(home)],
            capture_output=True,
            text=True,
        )
    assert result.adapter_ref.startswith(f"{ADAPTER}@")
    assert len(result.base.results) == len(result.adapter.results) == 8
    assert 0.0 <= result.base.accuracy <= 1.0 and 0.0 <= result.adapter.accuracy <= 1.0
    # Every answer came back through the gateway and was scored.
    assert all(r.prediction for r in result.adapter.results), log.getvalue()
    text = report.getvalue()
    assert (
        f"execution accuracy: {BASE_MODEL} {result.base.accuracy:.2f}, "
        f"{ADAPTER} {result.adapter.accuracy:.2f} (8 held-out questions)"
    ) in text
    assert f"{ADAPTER} ({result.adapter_ref})" in text
    assert "curl http://127.0.0.1:" in text
    assert stopped.returncode == 0, stopped.stderr
    for name in ("registry", "trainer", "gateway"):
        assert local_stack.running_pid(home, name) is None
