"""The registry end to end through the real gRPC client, on both storage backends: a local
directory and S3 (moto's server mode on loopback)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from services.client.registry import AsyncRegistryClient, RegistryClient
from services.common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from services.common.stubs import registry_pb2, registry_pb2_grpc
from tests.helpers.registry_artifacts import (
    TINY_MODEL,
    chat_line,
    write_adapter,
    write_dataset,
    write_model,
)
from tests.helpers.registry_process import start_moto_s3, start_registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    s3 = start_moto_s3(tmp_path_factory.mktemp("moto") / "moto.log")
    yield s3
    s3.stop()


@pytest.fixture(scope="module", params=["local", "s3"])
def registry(request, tmp_path_factory):
    """A registry per backend, holding the tiny base model every adapter here names."""
    env = {}
    if request.param == "s3":
        s3 = request.getfixturevalue("moto_s3")
        env = s3.registry_env(bucket="registry-it")
    server = start_registry(tmp_path_factory.mktemp(f"reg-{request.param}"), env=env)
    server.backend = request.param
    with RegistryClient(server.target) as client:
        client.push("model", TINY_MODEL, write_model(tmp_path_factory.mktemp("m") / "tiny"))
    yield server
    server.stop()


@pytest.fixture
def client(registry):
    with RegistryClient(registry.target, timeout=60) as c:
        yield c


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_push_pull_list_alias_resolve_delete(client, tmp_path):
    a1 = write_adapter(tmp_path / "a1", seed=1)
    a2 = write_adapter(tmp_path / "a2", seed=2, rank=8)
    (a1 / "README.md").write_bytes(b"")  # an empty file travels too
    (a1 / "extra" / "notes").mkdir(parents=True)
    (a1 / "extra" / "notes" / "n.txt").write_text("nested")
    v1 = client.push("adapter", "sql-lora", a1, description="first")
    v2 = client.push("adapter", "sql-lora", a2)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.adapter.base_model == f"{TINY_MODEL}@1"
    assert (v2.adapter.rank, v2.adapter.alpha, list(v2.adapter.target_modules)) == (
        8,
        16.0,
        ["q_proj", "v_proj"],
    )
    assert v1.manifest.sha256 != v2.manifest.sha256

    # pull the latest, and v1 by number: byte-identical to what was pushed
    assert client.pull("adapter", "sql-lora", tmp_path / "got2").version == 2
    assert _files(tmp_path / "got2") == _files(a2)
    client.pull("adapter", "sql-lora@1", tmp_path / "got1")
    assert _files(tmp_path / "got1") == _files(a1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    names = {(a.kind, a.name) for a in client.list()}
    assert (registry_pb2.ARTIFACT_KIND_ADAPTER, "sql-lora") in names
    assert [a.name for a in client.list("adapter")] == ["sql-lora"]
    assert [v.version for v in client.versions("adapter", "sql-lora")] == [2, 1]

    # alias: set, move atomically, resolve through it
    assert client.set_alias("adapter", "sql-lora", "prod", 1).aliases["prod"] == 1
    assert client.resolve("adapter", "sql-lora@prod").version == 1
    client.set_alias("adapter", "sql-lora", "prod", 2)
    resolved = client.resolve("adapter", "sql-lora@prod")
    assert (resolved.version, list(resolved.aliases)) == (2, ["prod"])
    assert client.get("adapter", "sql-lora").aliases == {"prod": 2}

    # an aliased version is protected; v1 is not
    with pytest.raises(FailedPrecondition, match="prod"):
        client.delete("adapter", "sql-lora", version=2)
    client.delete("adapter", "sql-lora", version=1)
    with pytest.raises(NotFound):
        client.resolve("adapter", "sql-lora@1")
    client.delete("adapter", "sql-lora")
    with pytest.raises(NotFound):
        client.get("adapter", "sql-lora")


def test_version_numbers_are_never_reused(client, tmp_path):
    name = "renumbered-lora"
    for seed in (1, 2):
        client.push("adapter", name, write_adapter(tmp_path / f"a{seed}", seed=seed))
    client.delete("adapter", name, version=2)
    assert client.push("adapter", name, write_adapter(tmp_path / "a3", seed=3)).version == 3
    with pytest.raises(NotFound, match="was deleted"):
        client.resolve("adapter", f"{name}@2")

    # deleting every version keeps the numbering; the name is gone to readers meanwhile
    client.delete("adapter", name)
    with pytest.raises(NotFound, match="was deleted"):
        client.get("adapter", name)
    with pytest.raises(NotFound, match="was deleted"):
        client.resolve("adapter", name)
    with pytest.raises(NotFound):
        client.versions("adapter", name)
    with pytest.raises(NotFound):
        client.delete("adapter", name)
    assert name not in [a.name for a in client.list("adapter")]
    assert client.push("adapter", name, write_adapter(tmp_path / "a4", seed=4)).version == 4
    assert [v.version for v in client.versions("adapter", name)] == [4]
    assert client.get("adapter", name).latest_version == 4
    for gone in (1, 2, 3):
        with pytest.raises(NotFound, match="was deleted"):
            client.resolve("adapter", f"{name}@{gone}")
    with pytest.raises(NotFound, match="has no version 5"):
        client.resolve("adapter", f"{name}@5")


def test_lineage_keeps_naming_a_deleted_version(client, tmp_path):
    """An adapter trained on a dataset version that is deleted, its name pushed again: the
    lineage still says the old number, and that number never names the new bytes."""
    client.push("dataset", "reborn-train", write_dataset(tmp_path / "one.jsonl"))
    adapter = client.push(
        "adapter",
        "reborn-lora",
        write_adapter(tmp_path / "a"),
        lineage=registry_pb2.Lineage(dataset="reborn-train"),
    )
    assert adapter.lineage.dataset == "reborn-train@1"
    client.delete("dataset", "reborn-train")
    other = write_dataset(tmp_path / "two.jsonl", [chat_line("other", "bytes")])
    assert client.push("dataset", "reborn-train", other).version == 2

    assert client.resolve("adapter", "reborn-lora").lineage.dataset == "reborn-train@1"
    chain = client.lineage("adapter", "reborn-lora")
    assert [(v.kind, v.name, v.version) for v in chain] == [
        (registry_pb2.ARTIFACT_KIND_ADAPTER, "reborn-lora", 1),
        (registry_pb2.ARTIFACT_KIND_MODEL, TINY_MODEL, 1),
    ]
    with pytest.raises(NotFound, match="was deleted"):
        client.resolve("dataset", "reborn-train@1")


def test_lineage_follows_dataset_and_base_model(client, tmp_path):
    data = client.push("dataset", "sql-train", write_dataset(tmp_path / "train.jsonl"))
    assert (data.dataset.format, data.dataset.num_examples) == (
        registry_pb2.DATASET_FORMAT_CHAT,
        5,
    )
    lineage = registry_pb2.Lineage(
        job_id="job-42", dataset="sql-train", metrics={"train_loss": 1.5}
    )
    lineage.hyperparameters.update({"learning_rate": 2e-4, "epochs": 3})
    adapter = client.push("adapter", "lineage-lora", write_adapter(tmp_path / "a"), lineage=lineage)
    assert adapter.lineage.dataset == "sql-train@1"  # pinned to the exact version
    assert adapter.lineage.base_model == f"{TINY_MODEL}@1"

    chain = client.lineage("adapter", "lineage-lora")
    assert [(v.kind, v.name, v.version) for v in chain] == [
        (registry_pb2.ARTIFACT_KIND_ADAPTER, "lineage-lora", 1),
        (registry_pb2.ARTIFACT_KIND_DATASET, "sql-train", 1),
        (registry_pb2.ARTIFACT_KIND_MODEL, TINY_MODEL, 1),
    ]
    assert chain[0].lineage.job_id == "job-42"
    assert chain[0].lineage.metrics["train_loss"] == 1.5
    assert chain[0].lineage.hyperparameters["epochs"] == 3
    merged = client.push(
        "model",
        "lineage-merged",
        write_model(tmp_path / "merged"),
        lineage=registry_pb2.Lineage(adapter="lineage-lora@latest", job_id="export-1"),
    )
    assert merged.model.merged_from_adapter == "lineage-lora@1"
    # a merge's base is its adapter's base: filled in when left out, refused when another
    assert merged.lineage.base_model == f"{TINY_MODEL}@1"
    chain = client.lineage("model", "lineage-merged")
    assert [v.name for v in chain] == ["lineage-merged", TINY_MODEL, "lineage-lora", "sql-train"]
    with pytest.raises(FailedPrecondition, match="trained on"):
        client.push(
            "model",
            "lineage-merged",
            write_model(tmp_path / "merged-2"),
            lineage=registry_pb2.Lineage(adapter="lineage-lora@1", base_model="lineage-merged@1"),
        )
    # the base model of an adapter cannot go while the adapter needs it
    with pytest.raises(FailedPrecondition, match="lineage-lora"):
        client.delete("model", TINY_MODEL)


async def test_async_client_resolve_and_pull(registry, tmp_path):
    async with AsyncRegistryClient(registry.target) as aclient:
        pushed = await aclient.push("adapter", "async-lora", write_adapter(tmp_path / "a"))
        resolved = await aclient.resolve("adapter", "async-lora")
        assert resolved.manifest.sha256 == pushed.manifest.sha256
        pulled = await aclient.pull("adapter", "async-lora@1", tmp_path / "out")
        assert pulled.version == 1
        assert _files(tmp_path / "out") == _files(tmp_path / "a")
        with pytest.raises(NotFound):
            await aclient.resolve("adapter", "missing-lora")


def test_flipped_byte_in_stored_blob_fails_pull_with_data_loss(registry, client, tmp_path, moto_s3):
    version = client.push("adapter", "flip-lora", write_adapter(tmp_path / "a", seed=7))
    weights = next(f for f in version.manifest.files if f.path.endswith(".safetensors"))
    key = f"blobs/sha256/{weights.sha256[:2]}/{weights.sha256}"
    if registry.backend == "local":
        blob = registry.home / "registry" / "blobs" / key
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
    else:
        s3 = moto_s3.minio()
        data = bytearray(s3.get_object("registry-it", key).read())
        data[len(data) // 2] ^= 0x01
        import io

        s3.put_object("registry-it", key, io.BytesIO(bytes(data)), len(data))

    with pytest.raises(DataLoss, match="do not match their sha256"):
        client.pull("adapter", "flip-lora", tmp_path / "out")
    # nothing of the bad file reached the destination
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    # nor anything else: a failed pull leaves no folder (and no staging) behind
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(grpc.RpcError) as raw:
        stub_pull_raw(registry.target, "flip-lora")
    assert raw.value.code() == grpc.StatusCode.DATA_LOSS


def stub_pull_raw(target: str, ref: str) -> None:
    from services.common.stubs import registry_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.DownloadArtifactRequest(
            kind=registry_pb2.ARTIFACT_KIND_ADAPTER, ref=ref
        )
        for _ in stub.DownloadArtifact(request):
            pass


# --- bad input: each with its gRPC code and message ---------------------------------------


def _code_of(exc_info) -> grpc.StatusCode:
    return exc_info.value.mapping.grpc_code


def test_pickle_adapter_is_refused(client, tmp_path):
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidArgument, match=r"adapter_model\.bin: pickle files") as exc:
        client.push("adapter", "pickle-lora", folder)
    assert _code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.code == "pickle_refused"  # the stable code travels in trailing metadata
    with pytest.raises(NotFound):
        client.get("adapter", "pickle-lora")


def test_a_description_with_a_nul_is_refused(client, tmp_path):
    """PostgreSQL's text cannot hold it; SQLite refuses it too, so both backends agree."""
    with pytest.raises(InvalidArgument, match="control character U\\+0000") as exc:
        client.push("adapter", "nul-lora", write_adapter(tmp_path / "a"), description="a\x00b")
    assert _code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(NotFound):
        client.get("adapter", "nul-lora")


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", "Upper", ".hidden", "x" * 64])
def test_path_like_name_is_refused(client, tmp_path, name):
    with pytest.raises(InvalidArgument, match="invalid name") as exc:
        client.push("adapter", name, write_adapter(tmp_path / "a"))
    assert _code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT


def _push_as(client, kind: str, name: str, files: dict[str, Path], **kw):
    """Upload with the version's file paths chosen freely (the names a file system may not
    hold), through the same transfer helpers and stub the client uses."""
    from services.client.grpc_channel import domain_errors
    from services.client.transfer import file_entry, file_requests, upload_header

    pairs = list(files.items())
    header = upload_header(
        kind,
        name,
        [file_entry(rel, path) for rel, path in pairs],
        base_model=kw.get("base_model"),
        description="",
        lineage=None,
        source="",
    )
    with domain_errors():
        return client._stub.UploadArtifact(iter([header, *file_requests(pairs)])).version


@pytest.mark.parametrize(
    "extra, offender, rule",
    [
        ({"tok": "a", "tok/x": "b"}, "tok/x", "'tok' is a file"),
        ({"x" * 300: "a"}, "x" * 40, "over 255 bytes"),
        ({"README.md": "a", "readme.md": "b"}, "readme.md", "differ only in case"),
    ],
)
def test_unportable_layouts_are_refused_at_upload(client, tmp_path, extra, offender, rule):
    folder = write_adapter(tmp_path / "a")
    files = {p.name: p for p in folder.iterdir()}
    for i, (rel, text) in enumerate(extra.items()):
        (tmp_path / f"extra{i}").write_text(text)
        files[rel] = tmp_path / f"extra{i}"
    with pytest.raises(InvalidArgument, match=f"invalid file path .*{rule}") as exc:
        _push_as(client, "adapter", "layout-lora", files, base_model=TINY_MODEL)
    assert _code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert offender in exc.value.message and len(exc.value.message) < 500
    assert (exc.value.param, exc.value.code) == ("files", "file_path_invalid")
    with pytest.raises(NotFound):  # nothing half-published
        client.get("adapter", "layout-lora")


@pytest.mark.parametrize("selector", ["99999999999999999999999", "9223372036854775808", "²", "١"])
def test_malformed_version_refs_are_invalid_argument_on_every_ref_rpc(client, tmp_path, selector):
    client.push("adapter", "ref-lora", write_adapter(tmp_path / "a"))
    ref = f"ref-lora@{selector}"
    calls = {
        "resolve": lambda: client.resolve("adapter", ref),
        "pull": lambda: client.pull("adapter", ref, tmp_path / "out"),
        "lineage": lambda: client.lineage("adapter", ref),
    }
    for what, call in calls.items():
        with pytest.raises(InvalidArgument, match="invalid reference") as exc:
            call()
        assert _code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT, what
        assert exc.value.param == "ref", what
    assert not (tmp_path / "out").exists()
    lineage = registry_pb2.Lineage(dataset=f"some-data@{selector}")
    with pytest.raises(InvalidArgument) as exc:
        client.push("adapter", "ref-lora", write_adapter(tmp_path / "b"), lineage=lineage)
    assert exc.value.param == "lineage.dataset"


def test_well_formed_absent_versions_are_not_found(client, tmp_path):
    client.push("adapter", "range-lora", write_adapter(tmp_path / "a"))
    for ref in ("range-lora@9223372036854775807", "range-lora@2"):
        with pytest.raises(NotFound):
            client.resolve("adapter", ref)
    assert client.resolve("adapter", "range-lora@0001").version == 1
    with pytest.raises(InvalidArgument, match="versions start at 1"):
        client.resolve("adapter", "range-lora@0")


def test_a_huge_name_comes_back_as_a_short_invalid_argument(client, tmp_path):
    """Echoing a 15k-character name used to overflow gRPC's 8 KiB header limit on the way back
    (RESOURCE_EXHAUSTED "received metadata size exceeds ...")."""
    name = "x" * 15_000
    calls = {
        "get": lambda: client.get("adapter", name),
        "resolve": lambda: client.resolve("adapter", name),
        "resolve alias": lambda: client.resolve("adapter", f"sql-lora@{name}"),
        "versions": lambda: client.versions("adapter", name),
        "push": lambda: client.push("adapter", name, write_adapter(tmp_path / "a")),
        "alias": lambda: client.set_alias("adapter", "sql-lora", name, 1),
    }
    for what, call in calls.items():
        with pytest.raises(InvalidArgument) as exc:
            call()
        assert _code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT, what
        assert len(exc.value.message) < 500, what
        assert "characters)" in exc.value.message, what  # the length, not the value
    with pytest.raises(NotFound) as exc:
        client.delete_alias("model", TINY_MODEL, name)  # the alias is not checked, only named
    assert len(exc.value.message) < 500


def test_unknown_base_model_is_a_failed_precondition(client, tmp_path):
    with pytest.raises(FailedPrecondition, match="unknown base model 'no-such-model'") as exc:
        client.push(
            "adapter", "orphan-lora", write_adapter(tmp_path / "a"), base_model="no-such-model"
        )
    assert _code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION
    assert (exc.value.code, exc.value.param) == ("base_model_not_found", "base_model")


@pytest.fixture(scope="module")
def real_adapter(tmp_path_factory, base_model_dir) -> Path:
    """A PEFT LoRA adapter of the 135M model, on its attention projections."""
    from tests.helpers.lora import make_lora_adapter

    return make_lora_adapter(base_model_dir, tmp_path_factory.mktemp("real-lora"), seed=1)


def test_adapter_shapes_must_fit_the_base_models_config(
    client, tmp_path, base_model_dir, real_adapter
):
    """The base model is checked by its config.json's sizes, not by its name only: the same
    module names on a model with another hidden size are refused, naming the tensor."""
    config = json.loads((base_model_dir / "config.json").read_text())

    def push_model(name: str, **changes) -> None:
        folder = write_model(tmp_path / name)
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        client.push("model", name, folder)

    push_model("fits-base")
    assert client.push("adapter", "fits-lora", real_adapter, base_model="fits-base").version == 1
    hidden = config["hidden_size"]
    push_model("wider-base", hidden_size=2 * hidden)
    with pytest.raises(FailedPrecondition) as exc:
        client.push("adapter", "unfit-lora", real_adapter, base_model="wider-base")
    assert _code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION
    assert (exc.value.code, exc.value.param) == ("base_model_mismatch", "base_model")
    assert (
        "tensor 'base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight' has shape "
        f"[8, {hidden}] but base model wider-base@1 needs [8, {2 * hidden}]" in exc.value.message
    )
    with pytest.raises(NotFound):
        client.get("adapter", "unfit-lora")


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(client, tmp_path, poison):
    folder = write_adapter(tmp_path / "a", poison=poison)
    with pytest.raises(InvalidArgument, match=r"layers\.1\.self_attn\.v_proj\.lora_B.* NaN or Inf"):
        client.push("adapter", "nan-lora", folder)
    with pytest.raises(NotFound):
        client.get("adapter", "nan-lora")


def test_malformed_jsonl_names_the_line_and_rule(client, tmp_path):
    lines = [
        chat_line(),
        chat_line(),
        '{"messages": [{"role": "user", "content": "x"}',
        chat_line(),
    ]
    with pytest.raises(
        InvalidArgument, match=r"bad\.jsonl line 3: invalid JSON .*rule: invalid_json"
    ):
        client.push("dataset", "bad-data", write_dataset(tmp_path / "bad.jsonl", lines))
    empty_answer = json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
    )
    with pytest.raises(InvalidArgument, match=r"line 2: .*rule: empty_assistant_message"):
        client.push(
            "dataset", "bad-data", write_dataset(tmp_path / "b2.jsonl", [chat_line(), empty_answer])
        )


def test_oversized_upload_is_resource_exhausted(tmp_path):
    server = start_registry(tmp_path / "home", env={"TUNEPLEX_REGISTRY_MAX_UPLOAD_BYTES": "50000"})
    try:
        with RegistryClient(server.target) as small:
            small.push("model", TINY_MODEL, write_model(tmp_path / "m"))
            with pytest.raises(ResourceExhausted, match="over the limit of 50000 bytes") as exc:
                small.push("adapter", "big-lora", write_adapter(tmp_path / "a", size_bytes=100_000))
            assert _code_of(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop()


def test_wrong_api_key_is_unauthenticated(tmp_path):
    server = start_registry(tmp_path / "home", api_key="right-key")
    try:
        with RegistryClient(server.target, api_key="wrong-key") as wrong:
            with pytest.raises(Unauthenticated, match="invalid API key"):
                wrong.list()
        with RegistryClient(server.target) as none:
            with pytest.raises(Unauthenticated, match="missing API key"):
                none.push("dataset", "d", write_dataset(tmp_path / "d.jsonl"))
        with RegistryClient(server.target, api_key="right-key") as right:
            assert right.list() == []
    finally:
        server.stop()


def test_fixture_registry_with_base_model_takes_a_peft_adapter(
    registry_with_base_model, tmp_path, base_model_dir
):
    """The shared fixture holds the real base model; a real PEFT adapter trained from its folder
    names it in adapter_config.json, which is enough to find it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    peft_model.save_pretrained(tmp_path / "peft")
    with RegistryClient(registry_with_base_model.target) as c:
        version = c.push("adapter", "peft-fixture-lora", tmp_path / "peft")
        assert version.adapter.base_model == "smollm2-135m-instruct@1"
        assert version.adapter.rank == 4
        c.pull("adapter", "peft-fixture-lora", tmp_path / "back")
    back = load_file(str(tmp_path / "back" / "adapter_model.safetensors"))
    assert all(np.isfinite(t).all() for t in back.values())
    save_file(back, str(tmp_path / "resaved.safetensors"))  # readable by the real library


SHAPED_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "dtype": "float32",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
}


def _push_shaped_model(client, tmp_path: Path, name: str) -> Path:
    """A model whose config.json has the shape the memory estimate reads."""
    folder = write_model(tmp_path / name)
    (folder / "config.json").write_text(json.dumps(SHAPED_CONFIG, indent=1))
    client.push("model", name, folder)
    return folder


async def test_read_file_streams_one_verified_file_and_names_a_missing_one(
    registry, client, tmp_path
):
    config = (_push_shaped_model(client, tmp_path, "read-one-model") / "config.json").read_bytes()
    assert client.read_file("model", "read-one-model", "config.json") == config
    async with AsyncRegistryClient(registry.target) as aclient:
        assert await aclient.read_file("model", "read-one-model@1", "config.json") == config
    with pytest.raises(NotFound, match="has no file 'tokenizer.json'") as info:
        client.read_file("model", "read-one-model", "tokenizer.json")
    assert info.value.param == "paths"

    # The raw stream: only the files asked for, in manifest order, behind the whole manifest.
    with grpc.insecure_channel(registry.target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.DownloadArtifactRequest(
            kind=registry_pb2.ARTIFACT_KIND_MODEL,
            ref="read-one-model",
            paths=["model.safetensors", "config.json"],
        )
        messages = list(stub.DownloadArtifact(request, timeout=30))
    assert [f.path for f in messages[0].version.manifest.files] == [
        "config.json",
        "model.safetensors",
    ]
    sent = [m.chunk.path for m in messages[1:]]
    assert sorted(set(sent), key=sent.index) == ["config.json", "model.safetensors"]


def test_create_job_reads_the_base_model_config_without_pulling_its_weights(
    registry, client, tmp_path
):
    """Admission used to pull the whole base model during CreateJob to read config.json."""
    from services.client.trainer import TrainerClient
    from services.common.stubs import trainer_pb2
    from tests.helpers.trainer_process import start_trainer

    _push_shaped_model(client, tmp_path, "admit-model")
    client.push("dataset", "admit-data", write_dataset(tmp_path / "admit.jsonl"))
    spec = trainer_pb2.TrainingSpec(
        base_model="admit-model",
        dataset="admit-data",
        output_name="admit-lora",
        lora=trainer_pb2.LoraConfig(r=4),
        hyperparameters=trainer_pb2.Hyperparameters(max_steps=1, batch_size=1),
    )
    trainer = start_trainer(tmp_path / "trainer-home", registry.target)
    cache = trainer.home / "trainer" / "cache"
    try:
        trainer_client = TrainerClient(trainer.target, timeout=60)
        assert trainer_client.estimate_memory(spec).peak_bytes > 0
        assert not list(cache.rglob("model.safetensors"))
        job = trainer_client.create_job(spec)
        # Checked before the job's worker (a new process, which does pull the model) can start.
        assert not list(cache.rglob("model.safetensors"))
        assert job.estimated_peak_memory_bytes > 0
        trainer_client.cancel_job(job.id)
    finally:
        trainer.stop()


def _blob_is_stored(registry, moto_s3, path: Path) -> bool:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    key = f"blobs/sha256/{digest[:2]}/{digest}"
    if registry.backend == "local":
        return (registry.home / "registry" / "blobs" / key).exists()
    from minio.error import S3Error

    try:
        moto_s3.minio().stat_object("registry-it", key)
    except S3Error:
        return False
    return True


def test_labels_round_trip_and_filter_across_pages(registry, client, tmp_path):
    """5 datasets, 2 carrying the owner label: pages of one hold exactly those 2, in order."""
    owner = {"tuneplex.owner": f"team-{registry.backend}", "openai.purpose": "fine-tune"}
    other = {"tuneplex.owner": "someone-else", "openai.purpose": "fine-tune"}
    pushed = {}
    for n, labels in enumerate([other, owner, {}, owner, other]):
        data = write_dataset(tmp_path / f"l{n}.jsonl", [chat_line(f"q{n}", "a")])
        pushed[f"labelled-{n}"] = client.push("dataset", f"labelled-{n}", data, labels=labels)
    assert dict(pushed["labelled-1"].labels) == owner
    assert dict(client.resolve("dataset", "labelled-3@1").labels) == owner
    assert dict(client.versions("dataset", "labelled-0")[0].labels) == other
    assert dict(client.get("dataset", "labelled-1").latest.labels) == owner
    assert dict(pushed["labelled-2"].labels) == {}

    page, token = client.list_page("dataset", labels=owner, page_size=1)
    assert [a.name for a in page] == ["labelled-1"] and token
    page, token = client.list_page("dataset", labels=owner, page_size=1, page_token=token)
    assert ([a.name for a in page], token) == (["labelled-3"], "")
    assert [a.name for a in client.list(labels=owner)] == ["labelled-1", "labelled-3"]
    assert [a.name for a in client.list("adapter", labels=owner)] == []
    only_owner = {"tuneplex.owner": owner["tuneplex.owner"]}
    assert [a.name for a in client.list("dataset", labels=only_owner)] == [
        "labelled-1",
        "labelled-3",
    ]

    # the filter reads the latest version: a new version without the label leaves the list
    client.push("dataset", "labelled-3", tmp_path / "l3.jsonl", labels=other)
    assert [a.name for a in client.list("dataset", labels=owner)] == ["labelled-1"]


async def test_async_client_pushes_and_lists_by_label(registry, tmp_path):
    labels = {"tuneplex.owner": f"async-{registry.backend}"}
    data = write_dataset(tmp_path / "a.jsonl")
    async with AsyncRegistryClient(registry.target, timeout=60) as aclient:
        version = await aclient.push(
            "dataset", f"async-labelled-{registry.backend}", data, labels=labels
        )
        assert dict(version.labels) == labels
        assert [a.name for a in await aclient.list("dataset", labels=labels)] == [version.name]
        page, token = await aclient.list_page(labels=labels, page_size=5)
        assert ([a.name for a in page], token) == ([version.name], "")


@pytest.mark.parametrize(
    "labels, param, says",
    [
        ({"Owner": "a"}, "labels", "invalid label key 'Owner'"),
        ({"owner": "line\nbreak"}, "labels.owner", "invalid value of label owner"),
        ({f"k{i}": "v" for i in range(33)}, "labels", "33 labels"),
    ],
)
def test_a_bad_label_is_refused_before_a_byte_is_stored(
    registry, client, moto_s3, tmp_path, labels, param, says
):
    data = write_dataset(
        tmp_path / "d.jsonl", [chat_line("never", f"stored {param} {len(labels)}")]
    )
    with pytest.raises(InvalidArgument, match=says) as exc:
        client.push("dataset", "bad-labels", data, labels=labels)
    assert exc.value.param == param
    with pytest.raises(NotFound):
        client.get("dataset", "bad-labels")
    assert not _blob_is_stored(registry, moto_s3, data)
    with pytest.raises(InvalidArgument, match=says):
        client.list(labels=labels)


def pair_line(question: str = "capital of France?", **outputs) -> str:
    record = {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": "Paris."}],
        "non_preferred_output": [{"role": "assistant", "content": "London."}],
    }
    for key, value in outputs.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record)


def test_preference_dataset_is_accepted_with_its_count(client, tmp_path):
    data = write_dataset(tmp_path / "prefs.jsonl", [pair_line(f"q{i}") for i in range(3)])
    version = client.push("dataset", "prefs", data, labels={"openai.purpose": "fine-tune"})
    assert (version.dataset.format, version.dataset.num_examples) == (
        registry_pb2.DATASET_FORMAT_PREFERENCE,
        3,
    )
    client.pull("dataset", "prefs", tmp_path / "out")
    assert (tmp_path / "out" / "prefs.jsonl").read_bytes() == data.read_bytes()


@pytest.mark.parametrize(
    "bad, says",
    [
        (pair_line(non_preferred_output=None), "non_preferred_output is missing"),
        (pair_line(preferred_output=None), "preferred_output is missing"),
        (
            pair_line(preferred_output=[{"role": "assistant", "content": ""}]),
            r"preferred_output message 1 \(assistant\) is empty",
        ),
        (
            pair_line(preferred_output=[{"role": "user", "content": "a"}]),
            "preferred_output message has role 'user'",
        ),
        (
            pair_line(
                input={
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ),
            "input.messages must end with a user message",
        ),
        (chat_line(), "chat \\(messages\\) record in a preference"),
    ],
)
def test_each_preference_rule_is_refused_with_its_line(
    registry, client, moto_s3, tmp_path, bad, says
):
    data = write_dataset(tmp_path / "prefs.jsonl", [pair_line(), pair_line("q2"), bad])
    with pytest.raises(InvalidArgument, match=rf"prefs\.jsonl line 3: {says}") as exc:
        client.push("dataset", "bad-prefs", data)
    assert (exc.value.code, exc.value.param) == ("dataset_invalid", "file")
    with pytest.raises(NotFound):
        client.get("dataset", "bad-prefs")
    assert not _blob_is_stored(registry, moto_s3, data)
