"""The local side of a pull: a download lands in its folder whole and verified, or not at all."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.client.transfer import FileReader, PullWriter
from services.common.errors import DataLoss, FailedPrecondition
from services.common.stubs import registry_pb2


def _version(files: dict[str, bytes], *, corrupt: str | None = None):
    version = registry_pb2.ArtifactVersion(name="sql-lora", version=1)
    for path, data in files.items():
        digest = hashlib.sha256(data if path != corrupt else data + b"!").hexdigest()
        version.manifest.files.add(path=path, size_bytes=len(data), sha256=digest)
    return version


def _pull(dest: Path, files: dict[str, bytes], **kw) -> registry_pb2.ArtifactVersion:
    """Feed a download the way the registry streams it (one chunk per file here)."""
    writer = PullWriter(dest)
    try:
        writer.start(_version(files, **kw))
        for path, data in files.items():
            if data:
                writer.chunk(registry_pb2.FileChunk(path=path, data=data))
        return writer.finish()
    finally:
        writer.close()


FILES = {"adapter_config.json": b"{}", "sub/w.safetensors": b"w" * 100, "empty": b""}


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


def test_pull_into_a_new_folder(tmp_path):
    _pull(tmp_path / "a" / "b" / "out", FILES)
    assert _tree(tmp_path / "a" / "b" / "out") == FILES
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["out"]  # no staging left


def test_pull_into_an_empty_or_filled_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _pull(tmp_path / "empty", FILES)
    assert _tree(tmp_path / "empty") == FILES
    filled = tmp_path / "filled"
    (filled / "sub").mkdir(parents=True)
    (filled / "mine.txt").write_text("kept")
    (filled / "adapter_config.json").write_text("old")
    _pull(filled, FILES)
    assert _tree(filled) == {**FILES, "mine.txt": b"kept"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "filled"]


def test_a_corrupt_file_leaves_no_folder_behind(tmp_path):
    # The first file is fine and complete; the second does not match its sha256.
    with pytest.raises(DataLoss, match="do not match their sha256"):
        _pull(tmp_path / "new" / "out", FILES, corrupt="sub/w.safetensors")
    assert list(tmp_path.iterdir()) == []  # not `out`, not the `new` made for it, no staging


def test_a_corrupt_file_leaves_an_existing_folder_as_it_was(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("kept")
    with pytest.raises(DataLoss):
        _pull(tmp_path / "out", FILES, corrupt="sub/w.safetensors")
    assert _tree(tmp_path / "out") == {"mine.txt": b"kept"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_stream_that_ends_early_leaves_nothing(tmp_path):
    writer = PullWriter(tmp_path / "out")
    writer.start(_version(FILES))
    writer.chunk(registry_pb2.FileChunk(path="adapter_config.json", data=b"{}"))
    with pytest.raises(DataLoss, match="ended before every file"):
        writer.finish()
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_data_before_the_manifest_is_data_loss(tmp_path):
    writer = PullWriter(tmp_path / "out")
    with pytest.raises(DataLoss, match="before its manifest"):
        writer.chunk(registry_pb2.FileChunk(path="adapter_config.json", data=b"{}"))
    with pytest.raises(DataLoss, match="ended before every file"):
        writer.finish()
    writer.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "files", [{"tok": b"a", "tok/x": b"b"}, {"A.txt": b"a", "a.txt": b"b"}, {"x" * 300: b"a"}]
)
def test_a_version_no_file_system_holds_is_refused_before_writing(tmp_path, files):
    """Versions stored before the registry refused such layouts: one clear error, no folder."""
    with pytest.raises(FailedPrecondition, match="sql-lora@1 cannot be written to disk") as exc:
        _pull(tmp_path / "out", files)
    assert exc.value.code == "file_layout_invalid"
    assert list(tmp_path.iterdir()) == []


def test_local_write_failures_are_one_domain_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FailedPrecondition, match="cannot write") as exc:
        _pull(tmp_path / "afile" / "out", FILES)
    assert str(tmp_path) not in exc.value.message  # no local path in what the gateway may show
    with pytest.raises(FailedPrecondition, match="not a folder"):
        _pull(tmp_path / "afile", FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_a_merge_that_would_meet_a_folder_moves_nothing(tmp_path):
    out = tmp_path / "out"
    (out / "adapter_config.json").mkdir(parents=True)  # a folder where a file must go
    with pytest.raises(FailedPrecondition, match="in the way of 'adapter_config.json'"):
        _pull(out, FILES)
    assert [p.relative_to(out).as_posix() for p in out.rglob("*")] == ["adapter_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _read(path: str, files: dict[str, bytes], chunks: list[bytes], **kw) -> bytes:
    """Feed a one-file download (``paths=[path]``) the way the registry streams it."""
    reader = FileReader(path)
    reader.start(_version(files, **kw))
    for data in chunks:
        reader.chunk(registry_pb2.FileChunk(path=path, data=data))
    return reader.finish()


def test_read_file_returns_the_verified_bytes_of_one_file():
    files = {"config.json": b'{"hidden_size": 8}', "model.safetensors": b"w" * 100}
    assert _read("config.json", files, [b'{"hidden', b'_size": 8}']) == files["config.json"]


@pytest.mark.parametrize(
    "chunks, kw",
    [
        ([b'{"a": 2}'], {"corrupt": "config.json"}),  # bytes differ from the manifest's sha256
        ([b'{"a"'], {}),  # the stream ended early
        ([b'{"a": 1}', b"more"], {}),  # more bytes than the manifest lists
    ],
)
def test_read_file_refuses_bytes_that_do_not_match_the_manifest(chunks, kw):
    with pytest.raises(DataLoss):
        _read("config.json", {"config.json": b'{"a": 1}'}, chunks, **kw)


def test_read_file_refuses_a_chunk_of_another_file():
    reader = FileReader("config.json")
    reader.start(_version({"config.json": b"{}", "w.bin": b"ww"}))
    with pytest.raises(DataLoss, match="does not match its manifest"):
        reader.chunk(registry_pb2.FileChunk(path="w.bin", data=b"ww"))
