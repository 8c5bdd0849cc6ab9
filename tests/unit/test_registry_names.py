import pytest

from services.common.errors import InvalidArgument
from services.registry.names import Ref, check_alias, check_file_path, check_name, parse_ref


@pytest.mark.parametrize("name", ["a", "sql-lora", "smollm2-135m-instruct", "v1.2_x", "0" * 63])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", ".a", "A", "a/b", "../x", "a..b", "..", "a b", "a\\b", "0" * 64, "é"]
)
def test_invalid_names(name):
    with pytest.raises(InvalidArgument, match="invalid name"):
        check_name(name)


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("sql-lora", Ref("sql-lora")),
        ("sql-lora@latest", Ref("sql-lora")),
        ("sql-lora@3", Ref("sql-lora", version=3)),
        ("sql-lora@prod", Ref("sql-lora", alias="prod")),
    ],
)
def test_parse_ref(ref, expected):
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["sql-lora@0", "sql-lora@", "x@../y", "@3", "a/b@1"])
def test_bad_refs(ref):
    with pytest.raises(InvalidArgument):
        parse_ref(ref)


def test_aliases_cannot_be_numbers_or_latest():
    assert check_alias("prod") == "prod"
    for alias in ("3", "latest", "../p"):
        with pytest.raises(InvalidArgument):
            check_alias(alias)


@pytest.mark.parametrize("path", ["a.json", "sub/dir/w.safetensors", "1_pooling/config.json"])
def test_valid_file_paths(path):
    assert check_file_path(path) == path


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../b", "a//b", "a\\b", "C:x", "./a"]
)
def test_path_traversal_file_paths_refused(path):
    with pytest.raises(InvalidArgument, match="invalid file path"):
        check_file_path(path)
