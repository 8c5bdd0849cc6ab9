"""`tuneplex models import`: a plain bf16 safetensors folder transformers loads, idempotent,
one clear line and exit 2 for a bad source."""

import json
import subprocess
import sys
import time

import pytest

from services.client.model_import import MARKER, default_name, import_model
from services.common.errors import InvalidArgument, NotFound
from tests.conftest import BASE_MODEL, TEST_CACHE

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "services.client.cli"]


def test_folder_is_plain_bf16_safetensors(base_model_dir):
    names = {p.name for p in base_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    assert not [n for n in names if n.endswith((".bin", ".gguf", ".pt"))]
    config = json.loads((base_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"


def test_transformers_loads_it_and_it_answers(base_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    assert tokenizer.chat_template, "the chat template must survive the import"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_import_is_reused_and_fast(base_model_dir):
    start = time.perf_counter()
    again = import_model(BASE_MODEL, home=TEST_CACHE)
    assert again.reused and again.path == base_model_dir
    assert time.perf_counter() - start < 2.0


def test_import_from_an_hf_folder(base_model_dir, tmp_path):
    result = import_model(str(base_model_dir), home=tmp_path, name="copy")
    assert (result.path / "model.safetensors").stat().st_size == (
        base_model_dir / "model.safetensors"
    ).stat().st_size


def test_same_name_from_another_source_is_refused(base_model_dir, tmp_path):
    import_model(str(base_model_dir), home=tmp_path, name="m")
    with pytest.raises(InvalidArgument, match="pick another --name"):
        import_model(str(tmp_path / "elsewhere"), home=tmp_path, name="m")


def test_bad_sources(tmp_path):
    with pytest.raises(NotFound):
        import_model("/no/such/folder", home=tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InvalidArgument, match="unsupported file"):
        import_model(str(tmp_path / "notes.txt"), home=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="no config.json"):
        import_model(str(tmp_path / "empty"), home=tmp_path)
    assert not (tmp_path / "models" / "empty").exists()


@pytest.mark.parametrize("source", ["/no/such/folder", "notes.txt"])
def test_cli_bad_source_is_one_line_exit_2(tmp_path, source):
    (tmp_path / "notes.txt").write_text("hi")
    result = subprocess.run(
        [*CLI, "models", "import", source, "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def test_default_name():
    assert default_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m-instruct"
    assert default_name("/x/Qwen2.5-0.5B.gguf") == "qwen2.5-0.5b"
