import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from services.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.common.stubs import registry_pb2
from services.registry.lora_shapes import check_lora_shapes
from services.registry.safetensors_check import SafetensorsCheck
from services.registry.validation import plan_upload
from tests.helpers.registry_artifacts import (
    EXACT_GRADERS,
    write_adapter,
    write_evaluation,
    write_sqlite,
)


def header_for(folder: Path, kind=registry_pb2.ARTIFACT_KIND_ADAPTER, name="a", extra=()):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    entries = [
        registry_pb2.FileEntry(
            path=p.relative_to(folder).as_posix(),
            size_bytes=p.stat().st_size,
            sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in files
    ]
    return registry_pb2.UploadHeader(kind=kind, name=name, files=[*entries, *extra])


def run_plan(
    folder: Path,
    *,
    limit: int = 10**9,
    chunk: int = 1000,
    kind=registry_pb2.ARTIFACT_KIND_ADAPTER,
):
    header = header_for(folder, kind=kind)
    plan = plan_upload(header, max_upload_bytes=limit, max_example_chars=10**6)
    for entry in plan.header.files:
        data = (folder / entry.path).read_bytes()
        check = plan.checks[entry.path]
        for i in range(0, len(data), chunk):
            check.feed(data[i : i + chunk])
        check.finish()
    return plan.info()


def test_adapter_facts_are_parsed(tmp_path):
    folder = write_adapter(
        tmp_path, rank=8, config={"use_dora": True, "modules_to_save": ["lm_head"]}
    )
    info = run_plan(folder)
    assert (info.rank, info.alpha, list(info.target_modules)) == (8, 16.0, ["q_proj", "v_proj"])
    assert info.use_dora and not info.use_rslora
    assert list(info.modules_to_save) == ["lm_head"] and info.task_type == "CAUSAL_LM"


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_refused(tmp_path, dtype, poison):
    folder = write_adapter(tmp_path, dtype=dtype, poison=poison)
    with pytest.raises(InvalidArgument, match="v_proj.lora_B.weight' contains NaN or Inf"):
        run_plan(folder, chunk=333)  # odd chunks split elements across feeds


def test_bf16_nan_found_on_bit_patterns(tmp_path):
    import struct

    ok = np.array([0x3F80, 0xBF80, 0x0000, 0x7F7F], dtype="<u2")  # 1, -1, 0, max finite
    path = tmp_path / "w.safetensors"
    header = json.dumps({"t": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    for words, finite in ((ok, True), (np.array([0x3F80, 0x7FC0, 0, 0], "<u2"), False)):
        path.write_bytes(struct.pack("<Q", len(header)) + header + words.tobytes())
        check = SafetensorsCheck("w.safetensors", path.stat().st_size, check_finite=True)
        if finite:
            check.feed(path.read_bytes())
            check.finish()
        else:
            with pytest.raises(InvalidArgument, match="NaN or Inf"):
                check.feed(path.read_bytes())


@pytest.mark.parametrize(
    "pickle_name", ["adapter_model.bin", "training_args.bin", "opt.pt", "x.pkl"]
)
def test_pickle_refused_from_header_alone(tmp_path, pickle_name):
    folder = write_adapter(tmp_path)
    (folder / pickle_name).write_bytes(b"\x80\x04")
    with pytest.raises(InvalidArgument, match="pickle files"):
        plan_upload(header_for(folder), max_upload_bytes=10**9, max_example_chars=1000)


def test_missing_files_and_bad_config(tmp_path):
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_config.json").unlink()
    with pytest.raises(InvalidArgument, match="adapter_config.json is missing"):
        run_plan(folder)
    bad = write_adapter(tmp_path / "b", config={"peft_type": "PROMPT_TUNING"})
    with pytest.raises(InvalidArgument, match="takes LORA, IA3, LOHA, LOKR adapters"):
        run_plan(bad)
    bad_rank = write_adapter(tmp_path / "c", config={"r": 0})
    with pytest.raises(InvalidArgument, match="'r' must be a positive integer"):
        run_plan(bad_rank)


def test_truncated_or_fake_safetensors_refused(tmp_path):
    folder = write_adapter(tmp_path)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(InvalidArgument, match="header describes"):
        run_plan(folder)
    weights.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(InvalidArgument, match="not a safetensors file"):
        run_plan(folder)


def test_no_lora_tensors_refused(tmp_path):
    folder = write_adapter(tmp_path)
    save_file({"w": np.ones(4, np.float32)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(InvalidArgument, match="no LoRA tensors"):
        run_plan(folder)


def test_size_limit_checked_before_any_byte(tmp_path):
    folder = write_adapter(tmp_path)
    with pytest.raises(ResourceExhausted, match="over the limit of 100 bytes"):
        plan_upload(header_for(folder), max_upload_bytes=100, max_example_chars=1000)


def test_dataset_files_must_be_jsonl(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    header = header_for(tmp_path, kind=registry_pb2.ARTIFACT_KIND_DATASET)
    with pytest.raises(InvalidArgument, match=".jsonl files only"):
        plan_upload(header, max_upload_bytes=10**9, max_example_chars=1000)


DATASET = registry_pb2.ARTIFACT_KIND_DATASET
EVALUATION = registry_pb2.ARTIFACT_KIND_EVALUATION


def test_one_sqlite_file_is_a_sqlite_dataset(tmp_path):
    write_sqlite(tmp_path / "shop.sqlite3")
    info = run_plan(tmp_path, kind=DATASET, chunk=37)  # the header split across feeds
    assert (info.format, info.num_examples) == (registry_pb2.DATASET_FORMAT_SQLITE, 0)


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda b: b"not sqlite at all" + b[17:], "first bytes are not the SQLite header"),
        (lambda b: b[:16] + b"\x03\x00" + b[18:], "page size 768"),
        (lambda b: b[:21] + b"\x00" + b[22:], "payload fractions"),
        (lambda b: b[:-10], "whole number of"),
        (lambda b: b[:50], "shorter than the 100-byte"),
    ],
)
def test_damaged_sqlite_refused(tmp_path, damage, why):
    good = write_sqlite(tmp_path / "src" / "x.db").read_bytes()
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "x.db").write_bytes(damage(good))
    with pytest.raises(InvalidArgument, match=why) as exc:
        run_plan(tmp_path / "up", kind=DATASET)
    assert exc.value.code == "not_sqlite" and "(rule: not_sqlite)" in exc.value.message


def test_sqlite_with_other_files_refused(tmp_path):
    write_sqlite(tmp_path / "a.db")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(InvalidArgument, match="exactly one database file"):
        plan_upload(
            header_for(tmp_path, kind=DATASET), max_upload_bytes=10**9, max_example_chars=1000
        )


def test_evaluation_info_from_the_summary(tmp_path):
    write_evaluation(
        tmp_path,
        model="m@2",
        model_kind="model",
        eval_set="s@1",
        score=0.6,
        ci=(0.4, 0.8),
        num_items=3,
    )
    info = run_plan(tmp_path, kind=EVALUATION, chunk=50)
    assert info.model_kind == registry_pb2.ARTIFACT_KIND_MODEL
    assert (info.model, info.eval_set, info.num_items, info.num_errors) == ("m@2", "s@1", 3, 0)
    assert (info.score, info.ci_low, info.ci_high) == (0.6, 0.4, 0.8)
    assert dict(info.grader_scores) == {EXACT_GRADERS[0]["name"]: 0.6}


@pytest.mark.parametrize(
    "overrides, why",
    [
        ({"score": 1.5}, "field 'score'"),
        ({"model_kind": "dataset"}, "field 'model_kind'"),
        ({"surprise": 1}, "field 'surprise'"),
        ({"graders_sha256": "ab" * 32}, "graders_sha256 is not the sha256"),
        ({"num_items": 5}, "has 3 results but summary.json counts 5"),
    ],
)
def test_broken_evaluation_refused(tmp_path, overrides, why):
    write_evaluation(
        tmp_path, model="a@1", eval_set="s@1", score=0.5, num_items=3, overrides=overrides
    )
    with pytest.raises(InvalidArgument, match=why):
        run_plan(tmp_path, kind=EVALUATION)


def test_evaluation_files_are_exactly_summary_and_results(tmp_path):
    write_evaluation(tmp_path, model="a@1", eval_set="s@1", score=0.5)
    (tmp_path / "results.jsonl").write_text('{"index": 0}\n[1]\n')
    with pytest.raises(InvalidArgument, match="results.jsonl line 2: each line must be"):
        run_plan(tmp_path, kind=EVALUATION)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidArgument, match="exactly summary.json and results.jsonl"):
        run_plan(tmp_path, kind=EVALUATION)


QWEN_LIKE = {  # grouped-query attention: k/v project to fewer features than q
    "hidden_size": 64,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 160,
}
PREFIX = "base_model.model.model.layers.3"


def test_lora_shapes_follow_the_base_config():
    shapes = {
        f"{PREFIX}.self_attn.q_proj.lora_A.weight": (4, 64),
        f"{PREFIX}.self_attn.q_proj.lora_B.weight": (64, 4),
        f"{PREFIX}.self_attn.k_proj.lora_B.weight": (16, 4),
        f"{PREFIX}.self_attn.o_proj.lora_A.default.weight": (4, 64),
        f"{PREFIX}.mlp.down_proj.lora_A.weight": (4, 160),
        f"{PREFIX}.mlp.up_proj.lora_B.weight": (160, 4),
        # not a standard projection of the config's sizes: not checked
        f"{PREFIX}.mlp.experts.0.up_proj.lora_B.weight": (999, 4),
        "base_model.model.lm_head.lora_B.weight": (7, 4),
    }
    check_lora_shapes("adapter_model.safetensors", shapes, QWEN_LIKE, "qwen@1")
    check_lora_shapes("adapter_model.safetensors", {"x.lora_A.weight": (1, 1)}, {}, "m@1")


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        (f"{PREFIX}.self_attn.v_proj.lora_B.weight", (64, 4), [16, 4]),
        (f"{PREFIX}.self_attn.q_proj.lora_A.weight", (4, 32), [4, 64]),
        (f"{PREFIX}.mlp.gate_proj.lora_B.weight", (128, 4), [160, 4]),
        (f"{PREFIX}.mlp.down_proj.lora_A.weight", (4, 64), [4, 160]),
    ],
)
def test_a_lora_shape_off_the_base_config_is_refused(name, shape, expected):
    with pytest.raises(FailedPrecondition) as exc:
        check_lora_shapes("adapter_model.safetensors", {name: shape}, QWEN_LIKE, "qwen@1")
    assert (exc.value.code, exc.value.param) == ("base_model_mismatch", "base_model")
    assert f"{name}' has shape {list(shape)} but base model qwen@1 needs {expected}" in (
        exc.value.message
    )


def test_safetensors_check_records_shapes(tmp_path):
    folder = write_adapter(tmp_path / "a", rank=4)
    data = (folder / "adapter_model.safetensors").read_bytes()
    check = SafetensorsCheck("w", len(data), check_finite=False)
    check.feed(data)
    check.finish()
    assert check.tensor_shapes[f"{PREFIX[:-1]}1.self_attn.v_proj.lora_B.weight"] == (64, 4)
