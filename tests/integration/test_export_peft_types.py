"""IA3, LoHa and LoKr adapters made by PEFT on SmolLM2-135M, pushed to a real registry on
loopback, pulled back and merged by the real export recipe (``python -m
services.trainer.recipes.export``): the merged model answers as PEFT's unmerged adapter does,
token for token in fp32, and not as the base does. The registry refuses the same adapters
with another type's config, or against a base model of other widths, over gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from services.client.registry import RegistryClient
from services.common.errors import FailedPrecondition, InvalidArgument
from services.trainer.export_spec import ExportConfig
from tests.helpers import merge_check
from tests.helpers.peft_adapters import KINDS, make_peft_adapter

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BASE_REF = "smollm2-135m-instruct@1"
PROMPTS = merge_check.PROMPTS[:3]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def adapters(base_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft-export")
    return {
        kind: make_peft_adapter(kind, base_model_dir, root / kind, seed=21 + i)
        for i, kind in enumerate(KINDS)
    }


@pytest.fixture
def registry(registry_with_base_model):
    with RegistryClient(registry_with_base_model.target) as client:
        yield client


@pytest.fixture(scope="module")
def base_greedy(base_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    base = merge_check.load_fp32(base_model_dir)
    return merge_check.greedy(base, tokenizer, PROMPTS, NEW_TOKENS)


def run_export(adapter_dir: Path, model_dir: Path, out: Path, name: str) -> dict:
    config = out.parent / f"{name}-job.json"
    export = ExportConfig(
        adapter=f"{name}@1", output_name=f"{name}-merged", base_model=BASE_REF, precision="fp32"
    )
    config.write_text(
        json.dumps(
            {
                "export": export.model_dump(mode="json"),
                "adapter_dir": str(adapter_dir),
                "model_dir": str(model_dir),
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "services.trainer.recipes.export", "--config", str(config),
         "--output", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "export_report.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_pushed_adapter_exports_to_a_model_that_answers_as_the_unmerged_adapter(
    kind, adapters, registry, base_model_dir, base_greedy, tmp_path
):
    from transformers import AutoTokenizer

    name = f"peft-{kind.lower()}"
    pushed = registry.push("adapter", name, adapters[kind], base_model=BASE_REF)
    assert (pushed.adapter.peft_type, pushed.adapter.base_model) == (kind, BASE_REF)
    assert list(pushed.adapter.target_modules) == ["down_proj", "q_proj", "v_proj"]
    pulled = tmp_path / "pulled"
    registry.pull("adapter", f"{name}@{pushed.version}", pulled)

    out = tmp_path / "merged"
    report = run_export(pulled, base_model_dir, out, name)
    assert report["precision"] == "fp32" and report["load_precision"] == "fp32"
    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = merge_check.load_fp32(out)
    assert not any(
        mark in n for n, _ in merged.named_parameters() for mark in ("ia3_", "hada_", "lokr_")
    )
    reference = merge_check.base_plus_adapter(base_model_dir, pulled)
    expected = merge_check.greedy(reference, tokenizer, PROMPTS, NEW_TOKENS)
    assert merge_check.greedy(merged, tokenizer, PROMPTS, NEW_TOKENS) == expected
    assert expected != base_greedy, f"the {kind} adapter does not change the model"


def test_weights_of_another_type_are_invalid_argument_over_grpc(adapters, registry, tmp_path):
    import shutil

    folder = Path(shutil.copytree(adapters["LOHA"], tmp_path / "loha-as-lokr"))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOKR"}))
    with pytest.raises(InvalidArgument) as caught:
        registry.push("adapter", "peft-mislabelled", folder, base_model=BASE_REF)
    assert "is a LOHA tensor but adapter_config.json says peft_type LOKR" in caught.value.message
    assert str(tmp_path) not in caught.value.message


@pytest.mark.parametrize("kind", KINDS)
def test_an_adapter_of_other_widths_than_its_base_is_failed_precondition(
    kind, adapters, registry, base_model_dir, tmp_path
):
    # A llama of other widths in the registry: the adapter names it as its base.
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    config = json.loads((base_model_dir / "config.json").read_text())
    config.update(hidden_size=512, intermediate_size=1024, head_dim=64)
    (narrow / "config.json").write_text(json.dumps(config))
    save_file({"lm_head.weight": np.zeros((4, 4), np.float32)}, str(narrow / "model.safetensors"))
    base = registry.push("model", f"narrow-{kind.lower()}", narrow)
    with pytest.raises(FailedPrecondition) as caught:
        registry.push(
            "adapter", f"peft-misfit-{kind.lower()}", adapters[kind],
            base_model=f"{base.name}@{base.version}",
        )  # fmt: skip
    assert "the adapter was trained on another model" in caught.value.message
