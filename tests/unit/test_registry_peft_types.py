"""The registry's rules for IA3, LoHa and LoKr adapters, on adapters PEFT itself made on the
real SmolLM2-135M base: accepted with their facts, refused when the weights are another type's,
incomplete, non-finite or sized for another model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.stubs import registry_pb2
from services.registry.adapter_tensors import check_adapter_shapes
from services.registry.validation import ADAPTER_WEIGHTS, plan_upload
from services.trainer.recipes.export import check_mergeable
from tests.helpers.peft_adapters import KINDS, make_peft_adapter

LAYER0 = "base_model.model.model.layers.0"


@pytest.fixture(scope="module")
def adapters(base_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft-types")
    return {kind: make_peft_adapter(kind, base_model_dir, root / kind, seed=5) for kind in KINDS}


@pytest.fixture
def copy_of(adapters, tmp_path):
    copies = iter(range(100))

    def copy(kind: str) -> Path:
        return Path(shutil.copytree(adapters[kind], tmp_path / f"{kind}-{next(copies)}"))

    return copy


@pytest.fixture(scope="module")
def base_config(base_model_dir) -> dict:
    return json.loads((base_model_dir / "config.json").read_text())


def run_plan(folder: Path, chunk: int = 1 << 16) -> registry_pb2.AdapterInfo:
    entries = [
        registry_pb2.FileEntry(
            path=p.name,
            size_bytes=p.stat().st_size,
            sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(folder.iterdir())
        if p.is_file()
    ]
    header = registry_pb2.UploadHeader(
        kind=registry_pb2.ARTIFACT_KIND_ADAPTER, name="a", files=entries
    )
    plan = plan_upload(header, max_upload_bytes=10**10, max_example_chars=10**6)
    for entry in header.files:
        data = (folder / entry.path).read_bytes()
        check = plan.checks[entry.path]
        for i in range(0, len(data), chunk):
            check.feed(data[i : i + chunk])
        check.finish()
    info = plan.info()
    assert isinstance(info, registry_pb2.AdapterInfo)
    return info


def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_weights(folder: Path, change) -> None:
    path = folder / ADAPTER_WEIGHTS
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("kind", "rank", "alpha"), [("IA3", 0, 0.0), ("LOHA", 8, 8.0), ("LOKR", 8, 8.0)]
)
def test_peft_made_adapters_are_accepted_with_their_facts(adapters, base_config, kind, rank, alpha):
    info = run_plan(adapters[kind])
    assert (info.peft_type, info.rank, info.alpha) == (kind, rank, alpha)
    assert list(info.target_modules) == ["down_proj", "q_proj", "v_proj"]
    assert info.task_type == "CAUSAL_LM" and not info.use_dora
    shapes = {
        k: tuple(v.shape) for k, v in load_file(str(adapters[kind] / ADAPTER_WEIGHTS)).items()
    }
    check_adapter_shapes(ADAPTER_WEIGHTS, kind, shapes, base_config, "smollm2@1")  # fits


@pytest.mark.parametrize(
    ("weights_of", "config_says", "tensor"),
    [
        ("LOHA", "LOKR", "hada_w1_a"),
        ("LOKR", "IA3", "lokr_w1"),
        ("IA3", "LOHA", "ia3_l"),
        ("LOHA", "LORA", "hada_w1_a"),
    ],
)
def test_weights_of_one_type_under_another_types_config_are_refused(
    copy_of, weights_of, config_says, tensor
):
    folder = copy_of(weights_of)
    edit_config(folder, peft_type=config_says, r=8, alpha=8, lora_alpha=16)
    with pytest.raises(InvalidArgument) as caught:
        run_plan(folder)
    message = caught.value.message
    assert (
        f"is a {weights_of} tensor but adapter_config.json says peft_type {config_says}" in message
    )
    assert tensor in message and caught.value.code == "adapter_weights_mismatch"


def test_a_lora_tensor_among_loha_ones_is_refused(copy_of):
    folder = copy_of("LOHA")
    stray = f"{LAYER0}.self_attn.k_proj.lora_A.weight"
    edit_weights(folder, lambda t: t.update({stray: np.ones((8, 576), np.float32)}))
    with pytest.raises(InvalidArgument, match="is a LORA tensor but .* says peft_type LOHA"):
        run_plan(folder)


def test_a_module_missing_one_of_its_types_tensors_is_refused(copy_of):
    folder = copy_of("LOHA")
    edit_weights(folder, lambda t: t.pop(f"{LAYER0}.self_attn.q_proj.hada_w2_b"))
    with pytest.raises(InvalidArgument, match="q_proj' has .* needs hada_w2_a\\+hada_w2_b"):
        run_plan(folder)
    lokr = copy_of("LOKR")
    edit_weights(lokr, lambda t: t.pop(f"{LAYER0}.self_attn.q_proj.lokr_w1"))
    with pytest.raises(InvalidArgument, match="needs lokr_w1 or lokr_w1_a\\+lokr_w1_b"):
        run_plan(lokr)


def test_weights_without_any_tensor_of_the_type_are_refused(copy_of):
    folder = copy_of("IA3")
    save_file({"w": np.ones(4, np.float32)}, str(folder / ADAPTER_WEIGHTS))
    with pytest.raises(InvalidArgument, match="holds no IA3 tensors \\(ia3_l\\)"):
        run_plan(folder)


@pytest.mark.parametrize(
    ("kind", "tensor"),
    [
        ("IA3", "mlp.down_proj.ia3_l"),
        ("LOHA", "self_attn.v_proj.hada_w2_b"),
        ("LOKR", "self_attn.q_proj.lokr_w2_a"),
    ],
)
def test_non_finite_weights_are_refused(copy_of, kind, tensor):
    folder = copy_of(kind)
    name = f"{LAYER0}.{tensor}"

    def poison(tensors):
        tensors[name][0, 0] = np.nan

    edit_weights(folder, poison)
    with pytest.raises(InvalidArgument, match=f"{tensor}' contains NaN or Inf"):
        run_plan(folder, chunk=4099)  # odd chunks split elements across feeds


def test_config_rules_for_the_merged_types(copy_of):
    loha = copy_of("LOHA")
    edit_config(loha, alpha=0)
    with pytest.raises(InvalidArgument, match="'alpha' must be a positive number"):
        run_plan(loha)
    lokr = copy_of("LOKR")
    edit_config(lokr, r=None)
    with pytest.raises(InvalidArgument, match="'r' must be a positive integer"):
        run_plan(lokr)
    ia3 = copy_of("IA3")
    edit_config(ia3, feedforward_modules=["up_proj"])
    with pytest.raises(InvalidArgument, match="subset of 'target_modules'; 'up_proj' is not"):
        run_plan(ia3)
    other = copy_of("IA3")
    edit_config(other, peft_type="PROMPT_TUNING")
    with pytest.raises(InvalidArgument, match="takes LORA, IA3, LOHA, LOKR adapters"):
        run_plan(other)


# The base model's config with other widths: what an adapter trained on another model meets.
def narrower(config: dict) -> dict:
    return {**config, "hidden_size": 512, "intermediate_size": 1024, "head_dim": 64}


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("IA3", "ia3_l' has shape [1, 1536] but base model other@1 needs [512, 1] or [1, 1024]"),
        ("LOHA", "hada_w1_a' has shape [576, 8] but base model other@1 needs [512, r]"),
        ("LOKR", "Kronecker product of the factors of"),
    ],
)
def test_shapes_off_the_base_model_are_refused(adapters, base_config, kind, says):
    shapes = {
        k: tuple(v.shape) for k, v in load_file(str(adapters[kind] / ADAPTER_WEIGHTS)).items()
    }
    with pytest.raises(FailedPrecondition) as caught:
        check_adapter_shapes(ADAPTER_WEIGHTS, kind, shapes, narrower(base_config), "other@1")
    assert says in caught.value.message
    assert caught.value.code == "base_model_mismatch"


def test_a_lokr_factor_that_does_not_multiply_to_the_module_is_refused(adapters, base_config):
    shapes = {
        k: tuple(v.shape) for k, v in load_file(str(adapters["LOKR"] / ADAPTER_WEIGHTS)).items()
    }
    name = f"{LAYER0}.self_attn.q_proj.lokr_w1"
    rows, cols = shapes[name]
    shapes[name] = (rows * 2, cols)  # kron(W1, W2) is then [1152, 576], q_proj is [576, 576]
    with pytest.raises(FailedPrecondition, match=r"has shape \[1152, 576\] .* needs \[576, 576\]"):
        check_adapter_shapes(ADAPTER_WEIGHTS, "LOKR", shapes, base_config, "smollm2@1")
    inner = dict(shapes, **{name: (rows, cols)})
    inner[f"{LAYER0}.self_attn.q_proj.lokr_w2_b"] = (4, 24)  # r 4 after lokr_w2_a's r 8
    with pytest.raises(FailedPrecondition, match="r of lokr_w2_a"):
        check_adapter_shapes(ADAPTER_WEIGHTS, "LOKR", inner, base_config, "smollm2@1")


@pytest.mark.parametrize("kind", KINDS)
def test_the_merged_types_are_mergeable(kind):
    check_mergeable(
        {"peft_type": kind, "target_modules": ["q_proj"]}, {"tie_word_embeddings": True}
    )


def test_a_type_peft_cannot_merge_is_refused_for_export():
    with pytest.raises(FailedPrecondition, match="PROMPT_TUNING adapter does not merge"):
        check_mergeable({"peft_type": "PROMPT_TUNING"}, {})
