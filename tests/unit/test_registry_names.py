import pytest

from services.common.errors import InvalidArgument
from services.registry.names import (
    Ref,
    check_alias,
    check_file_layout,
    check_file_path,
    check_name,
    parse_ref,
)


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


# --- version numbers: ASCII digits, within the stored integer range ----------------------


@pytest.mark.parametrize(
    "ref, version",
    [("sql-lora@1", 1), ("sql-lora@007", 7), ("sql-lora@9223372036854775807", 2**63 - 1)],
)
def test_version_numbers_in_range(ref, version):
    assert parse_ref(ref) == Ref("sql-lora", version=version)


@pytest.mark.parametrize(
    "selector",
    [
        "99999999999999999999999",  # past SQLite's INTEGER: was an OverflowError (INTERNAL)
        "9223372036854775808",
        "9" * 5000,  # past int()'s 4300-digit limit: must not be a ValueError
        "²",  # str.isdigit() is true, int() raises
        "١",  # Arabic-Indic one: int() silently read it as version 1
        "１",  # fullwidth one
        "1²",
    ],
)
def test_non_ascii_or_out_of_range_versions_are_invalid_argument(selector):
    with pytest.raises(InvalidArgument, match="invalid reference") as exc:
        parse_ref(f"sql-lora@{selector}")
    assert exc.value.param == "ref"
    assert len(exc.value.message) < 400  # the 5000 digits are not echoed back


def test_parse_ref_names_the_request_field():
    with pytest.raises(InvalidArgument) as exc:
        parse_ref("sql-lora@²", param="training.dataset")
    assert exc.value.param == "training.dataset"
    with pytest.raises(InvalidArgument) as exc:
        parse_ref("Bad@1", param="lineage.dataset")
    assert exc.value.param == "lineage.dataset"


def test_aliases_made_of_non_ascii_digits_are_not_names():
    with pytest.raises(InvalidArgument):
        check_alias("١")


def test_a_huge_name_is_not_echoed_whole():
    with pytest.raises(InvalidArgument, match=r"invalid name 'xxx.*\(15000 characters\)") as exc:
        check_name("x" * 15_000)
    assert len(exc.value.message) < 400


# --- file layouts every file system can hold -------------------------------------------------


@pytest.mark.parametrize(
    "path, rule",
    [
        ("x" * 300 + ".json", "over 255 bytes"),
        ("d/" + "é" * 128, "over 255 bytes"),  # 256 bytes in UTF-8, 128 characters
        ("a\x7fb", "control characters"),
        ("a\x85b", "control characters"),
        ("a\nb", "control characters"),
    ],
)
def test_unportable_file_path_components_are_refused(path, rule):
    with pytest.raises(InvalidArgument, match=f"invalid file path .*{rule}") as exc:
        check_file_path(path)
    assert (exc.value.param, exc.value.code) == ("files", "file_path_invalid")


def test_component_of_255_bytes_is_fine():
    assert check_file_path("d/" + "x" * 255)


@pytest.mark.parametrize(
    "paths, offender, rule",
    [
        (["tok", "tok/x"], "tok/x", "'tok' is a file"),
        (["tok/x", "tok"], "tok/x", "'tok' is a file"),
        (["a/tok", "a/tok/b/c"], "a/tok/b/c", "'a/tok' is a file"),
        (["Tok", "tok/x"], "tok/x", "'Tok' is a file"),
        (["A.txt", "a.txt"], "a.txt", "differ only in case"),
        (["d/ß.json", "d/SS.json"], "d/SS.json", "differ only in case"),
        (["caf\u00e9", "cafe\u0301"], "cafe\u0301", "differ only in case"),
        (["x.json", "x.json"], "x.json", "listed twice"),
    ],
)
def test_layouts_no_file_system_holds_are_refused(paths, offender, rule):
    with pytest.raises(InvalidArgument, match=rule) as exc:
        check_file_layout(paths)
    assert repr(offender) in exc.value.message
    assert exc.value.param == "files"


def test_ordinary_layouts_pass():
    check_file_layout(["adapter_config.json", "tok/x", "tok2", "a/b/c", "README.md", "1_p/c.json"])
