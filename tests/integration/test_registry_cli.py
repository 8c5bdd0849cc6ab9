"""`tuneplex datasets/adapters/models` against a real registry."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.client.cli.app import app
from tests.helpers.registry_artifacts import (
    TINY_MODEL,
    chat_line,
    write_adapter,
    write_dataset,
    write_model,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def tuneplex(registry_server):
    runner = CliRunner()
    env = {"TUNEPLEX_REGISTRY_TARGET": registry_server.target, "COLUMNS": "200"}
    return lambda *args: runner.invoke(app, [str(a) for a in args], env=env)


def test_cli_story(tuneplex, tmp_path):
    r = tuneplex("models", "push", write_model(tmp_path / TINY_MODEL))
    assert r.exit_code == 0, r.output
    assert f"{TINY_MODEL}@1" in r.stdout
    assert TINY_MODEL in tuneplex("models", "list").stdout

    r = tuneplex("datasets", "upload", write_dataset(tmp_path / "Shop SQL.jsonl"))
    assert r.exit_code == 0, r.output
    assert "shop-sql@1" in r.stdout
    assert "5 examples, chat" in tuneplex("datasets", "list").stdout

    adapter = write_adapter(tmp_path / "a")
    assert tuneplex("adapters", "push", adapter, "--name", "sql-lora").exit_code == 0
    assert tuneplex("adapters", "push", adapter, "--name", "sql-lora").exit_code == 0
    r = tuneplex("adapters", "alias", "sql-lora", "prod", 1)
    assert r.exit_code == 0 and "sql-lora@prod -> 1" in r.stdout
    listing = tuneplex("adapters", "list").stdout
    assert "sql-lora" in listing and "prod→1" in listing
    show = tuneplex("adapters", "show", "sql-lora@prod").stdout
    assert "LoRA r=4 alpha=8 on tiny-base@1" in show and "adapter_model.safetensors" in show
    r = tuneplex("adapters", "pull", "sql-lora@prod", tmp_path / "out")
    assert r.exit_code == 0 and (tmp_path / "out" / "adapter_config.json").is_file()
    r = tuneplex("adapters", "delete", "sql-lora", "--version", "1")
    assert r.exit_code == 2 and "prod" in r.stderr
    assert tuneplex("adapters", "delete", "sql-lora").exit_code == 0


def test_cli_bad_input_exits_2_with_one_line(tuneplex, tmp_path):
    bad = write_dataset(tmp_path / "bad.jsonl", [chat_line(), "{oops"])
    r = tuneplex("datasets", "upload", bad)
    assert r.exit_code == 2
    assert r.stderr.strip().count("\n") == 0
    assert "line 2" in r.stderr and "invalid_json" in r.stderr
    r = tuneplex("adapters", "show", "nope")
    assert r.exit_code == 2 and "no adapter named 'nope'" in r.stderr
    r = tuneplex("adapters", "push", tmp_path / "missing", "--name", "x")
    assert r.exit_code == 2 and "no such file or folder" in r.stderr


def test_cli_failed_pull_prints_one_line_and_leaves_no_folder(tuneplex, tmp_path):
    assert tuneplex("models", "push", write_model(tmp_path / TINY_MODEL)).exit_code == 0
    adapter = write_adapter(tmp_path / "a")
    assert tuneplex("adapters", "push", adapter, "--name", "sql-lora").exit_code == 0
    (tmp_path / "afile").write_text("x")
    # A local write failure (here: a file where a folder must be) used to be a traceback.
    r = tuneplex("adapters", "pull", "sql-lora", tmp_path / "afile" / "out")
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.output
    assert r.stderr.startswith("error: cannot write") and r.stderr.strip().count("\n") == 0
    for ref in ("sql-lora@2", "sql-lora@²", "sql-lora@99999999999999999999999"):
        r = tuneplex("adapters", "pull", ref, tmp_path / "new" / "out")
        assert r.exit_code == 2 and r.stderr.strip().count("\n") == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "afile", TINY_MODEL]
