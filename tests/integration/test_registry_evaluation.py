"""Evaluation in the registry, through the real client against a real registry process: eval
sets and SQLite databases as datasets, EVALUATION versions bound to what they scored, and the
promotion gate that moves an alias only for a better score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.client.cli.app import app
from services.client.promotion import promote as promote_flow
from services.client.registry import RegistryClient
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.common.stubs import registry_pb2
from services.registry.metadata import FileRow, MetadataStore, NewVersion
from tests.helpers.registry_artifacts import (
    EXACT_GRADERS,
    TINY_MODEL,
    chat_line,
    eval_line,
    write_adapter,
    write_dataset,
    write_evaluation,
    write_model,
    write_sqlite,
)
from tests.helpers.registry_process import start_registry

pytestmark = pytest.mark.integration

EVAL_SET = "heldout"
OTHER_GRADERS = [{**EXACT_GRADERS[0], "name": "exact-other"}]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One registry for the module: the tiny base model, an eval set `heldout` (3 items) and
    a chat dataset `chat`."""
    root = tmp_path_factory.mktemp("reg-eval")
    server = start_registry(root / "home")
    with RegistryClient(server.target, timeout=60) as client:
        client.push("model", TINY_MODEL, write_model(root / "tiny"))
        lines = [eval_line("2+2?", "4"), eval_line("3+3?", "6"), json.dumps({"input": "hi"})]
        client.push("dataset", EVAL_SET, write_dataset(root / "heldout.jsonl", lines))
        client.push("dataset", "chat", write_dataset(root / "chat.jsonl"))
    server.root = root
    yield server
    server.stop()


@pytest.fixture
def client(registry):
    with RegistryClient(registry.target, timeout=60) as c:
        yield c


def push_adapter_versions(client: RegistryClient, tmp: Path, name: str, count: int) -> None:
    folder = write_adapter(tmp / f"{name}-adapter", base_model=TINY_MODEL)
    for _ in range(count):
        client.push("adapter", name, folder)


def push_evaluation(
    client: RegistryClient, tmp: Path, model: str, score: float, *, graders=None, **kw
) -> registry_pb2.ArtifactVersion:
    folder = write_evaluation(
        tmp / f"eval-{model}-{score}-{len(graders or [])}",
        model=model,
        eval_set=f"{EVAL_SET}@1",
        score=score,
        graders=graders,
        **kw,
    )
    lineage = registry_pb2.Lineage(job_id="job-1", adapter=model, eval_set=EVAL_SET)
    return client.push("evaluation", EVAL_SET, folder, lineage=lineage)


# --- datasets -------------------------------------------------------------------------------


def test_eval_set_is_a_dataset_of_format_eval(client):
    version = client.resolve("dataset", EVAL_SET)
    assert version.dataset.format == registry_pb2.DATASET_FORMAT_EVAL
    assert version.dataset.num_examples == 3


@pytest.mark.parametrize(
    "bad, rule",
    [
        (json.dumps({"input": [{"role": "assistant", "content": "x"}]}), "last_not_user"),
        (json.dumps({"input": [{"role": "wizard", "content": "x"}]}), "bad_role"),
        (json.dumps({"input": ""}), "empty_input"),
        (json.dumps({"answer": "4"}), "missing_input"),
    ],
)
def test_malformed_eval_item_refused_with_line_and_rule(client, tmp_path, bad, rule):
    path = write_dataset(tmp_path / "set.jsonl", [eval_line(), bad, eval_line()])
    with pytest.raises(InvalidArgument) as caught:
        client.push("dataset", "bad-set", path)
    assert caught.value.message.startswith("set.jsonl line 2: ")
    assert f"(rule: {rule})" in caught.value.message


def test_sqlite_dataset_accepted_and_fakes_refused(client, tmp_path):
    version = client.push("dataset", "shop-db", write_sqlite(tmp_path / "shop.db"))
    assert version.dataset.format == registry_pb2.DATASET_FORMAT_SQLITE
    assert version.dataset.num_examples == 0
    assert [f.path for f in version.manifest.files] == ["shop.db"]

    fake = tmp_path / "fake" / "fake.db"
    fake.parent.mkdir()
    fake.write_text("CREATE TABLE t (x);\n" * 20)
    with pytest.raises(InvalidArgument, match=r"fake\.db: not a SQLite database"):
        client.push("dataset", "fake-db", fake)
    truncated = tmp_path / "trunc" / "cut.sqlite"
    truncated.parent.mkdir()
    truncated.write_bytes((tmp_path / "shop.db").read_bytes()[:1000])
    with pytest.raises(InvalidArgument, match="whole number of"):
        client.push("dataset", "cut-db", truncated)
    mixed = tmp_path / "mixed"
    write_sqlite(mixed / "a.db")
    write_dataset(mixed / "train.jsonl", [chat_line()])
    with pytest.raises(InvalidArgument, match="exactly one database file"):
        client.push("dataset", "mixed-db", mixed)
    with pytest.raises(NotFound):
        client.resolve("dataset", "fake-db")


# --- evaluation records ---------------------------------------------------------------------


def test_evaluation_record_is_bound_to_what_it_scored(client, tmp_path):
    push_adapter_versions(client, tmp_path, "rec-lora", 1)
    version = push_evaluation(client, tmp_path, "rec-lora@1", 0.75, ci=(0.5, 1.0))
    info = version.evaluation
    assert version.kind == registry_pb2.ARTIFACT_KIND_EVALUATION
    assert (info.model_kind, info.model, info.eval_set) == (
        registry_pb2.ARTIFACT_KIND_ADAPTER,
        "rec-lora@1",
        f"{EVAL_SET}@1",
    )
    assert (info.score, info.ci_low, info.ci_high, info.num_items) == (0.75, 0.5, 1.0, 4)
    assert dict(info.grader_scores) == {"exact": 0.75} and len(info.graders_sha256) == 64
    assert version.lineage.eval_set == f"{EVAL_SET}@1"  # pinned on upload

    chain = client.lineage("evaluation", f"{version.name}@{version.version}")
    assert [(v.kind, v.name) for v in chain] == [
        (registry_pb2.ARTIFACT_KIND_EVALUATION, EVAL_SET),
        (registry_pb2.ARTIFACT_KIND_ADAPTER, "rec-lora"),
        (registry_pb2.ARTIFACT_KIND_MODEL, TINY_MODEL),
        (registry_pb2.ARTIFACT_KIND_DATASET, EVAL_SET),
    ]
    found = client.evaluations("adapter", "rec-lora@1", f"{EVAL_SET}@1")
    assert [(v.name, v.version) for v in found] == [(version.name, version.version)]
    assert client.evaluations("adapter", "rec-lora@1", "chat@1") == []


def test_evaluation_that_disagrees_with_its_lineage_refused(client, tmp_path):
    push_adapter_versions(client, tmp_path, "mismatch-lora", 2)
    folder = write_evaluation(
        tmp_path / "e", model="mismatch-lora@2", eval_set=f"{EVAL_SET}@1", score=0.5
    )
    lineage = registry_pb2.Lineage(adapter="mismatch-lora@1", eval_set=EVAL_SET)
    with pytest.raises(InvalidArgument) as caught:
        client.push("evaluation", "mismatch", folder, lineage=lineage)
    assert caught.value.param == "lineage.adapter"
    assert "mismatch-lora@2" in caught.value.message and "mismatch-lora@1" in caught.value.message
    with pytest.raises(InvalidArgument, match="lineage.eval_set"):
        client.push("evaluation", "mismatch", folder, lineage=registry_pb2.Lineage(
            adapter="mismatch-lora@2"))


def test_broken_evaluation_records_refused(client, tmp_path):
    push_adapter_versions(client, tmp_path, "broken-lora", 1)
    lineage = registry_pb2.Lineage(adapter="broken-lora@1", eval_set=EVAL_SET)
    common = {"model": "broken-lora@1", "eval_set": f"{EVAL_SET}@1"}
    out_of_range = write_evaluation(tmp_path / "a", score=0.5, **common, overrides={"score": 1.5})
    with pytest.raises(InvalidArgument, match="field 'score'"):
        client.push("evaluation", "broken", out_of_range, lineage=lineage)
    miscounted = write_evaluation(tmp_path / "b", score=0.5, **common, num_items=4)
    (miscounted / "results.jsonl").write_text('{"index": 0}\n')
    with pytest.raises(InvalidArgument, match="has 1 results but summary.json counts 4"):
        client.push("evaluation", "broken", miscounted, lineage=lineage)
    tampered = write_evaluation(tmp_path / "c", score=0.5, **common,
                                overrides={"graders_sha256": "0" * 64})
    with pytest.raises(InvalidArgument, match="graders_sha256"):
        client.push("evaluation", "broken", tampered, lineage=lineage)
    (tampered / "extra.txt").write_text("x")
    with pytest.raises(InvalidArgument, match="exactly summary.json and results.jsonl"):
        client.push("evaluation", "broken", tampered, lineage=lineage)


# --- the promotion gate ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def promo(registry, tmp_path_factory):
    """`promo-lora` v1..v6: v1 0.50, v2 0.70, v3 0.40, v4 none, v5 0.90 with other graders,
    v6 0.95."""
    tmp = tmp_path_factory.mktemp("promo")
    with RegistryClient(registry.target, timeout=60) as client:
        push_adapter_versions(client, tmp, "promo-lora", 6)
        for version, score in ((1, 0.5), (2, 0.7), (3, 0.4), (6, 0.95)):
            push_evaluation(client, tmp, f"promo-lora@{version}", score)
        push_evaluation(client, tmp, "promo-lora@5", 0.9, graders=OTHER_GRADERS)
    return "promo-lora"


def test_promotion_gate(client, promo):
    # A new alias: nothing to beat.
    first = client.promote("adapter", promo, "prod", 1, EVAL_SET)
    assert first.artifact.aliases["prod"] == 1 and first.previous_version == 0
    assert first.candidate_evaluation.evaluation.model == "promo-lora@1"
    assert not first.HasField("holder_evaluation")
    # Better by more than the margin: moves.
    second = client.promote("adapter", promo, "prod", 2, f"{EVAL_SET}@1", margin=0.1)
    assert second.artifact.aliases["prod"] == 2 and second.previous_version == 1
    assert second.holder_evaluation.evaluation.score == 0.5
    # Worse: refused with both scores, and the alias stays.
    with pytest.raises(FailedPrecondition) as caught:
        client.promote("adapter", promo, "prod", 3, EVAL_SET, margin=0.02)
    assert caught.value.code == "promotion_refused"
    text = caught.value.message
    assert "promo-lora@3 scores 0.40 [0.30, 0.50] on heldout@1" in text
    assert "promo-lora@2 (prod) 0.70 [0.60, 0.80]" in text
    assert "needs >= 0.72 (margin 0.02); the alias stays on 2" in text
    assert "tuneplex adapters alias promo-lora prod 3" in text
    assert client.resolve("adapter", f"{promo}@prod").version == 2
    # The holder itself: nothing to do.
    same = client.promote("adapter", promo, "prod", 2, EVAL_SET)
    assert same.artifact.aliases["prod"] == 2
    # No evaluation of the candidate.
    with pytest.raises(FailedPrecondition) as missing:
        client.promote("adapter", promo, "prod", 4, EVAL_SET)
    assert missing.value.code == "evaluation_missing"
    assert "tuneplex evals run --model promo-lora@4 --data heldout@1" in missing.value.message
    # Other graders: not comparable with the holder's score, however high.
    with pytest.raises(FailedPrecondition) as other:
        client.promote("adapter", promo, "prod", 5, EVAL_SET)
    assert other.value.code == "evaluation_missing" and "promo-lora@2 (prod)" in other.value.message
    assert client.resolve("adapter", f"{promo}@prod").version == 2


def test_promotion_refusals(client, promo):
    with pytest.raises(InvalidArgument) as kind:
        client.promote("evaluation", EVAL_SET, "prod", 1, EVAL_SET)
    assert kind.value.param == "kind" and "only adapters and models" in kind.value.message
    with pytest.raises(NotFound):
        client.promote("adapter", promo, "prod", 99, EVAL_SET)
    with pytest.raises(FailedPrecondition) as not_eval:
        client.promote("adapter", promo, "prod", 6, "chat")
    assert not_eval.value.code == "eval_set_invalid"
    with pytest.raises(FailedPrecondition) as no_set:
        client.promote("adapter", promo, "prod", 6, "no-such-set")
    assert no_set.value.code == "eval_set_not_found"
    with pytest.raises(InvalidArgument) as bad_alias:
        client.promote("adapter", promo, "other-lora@prod", 6, EVAL_SET)
    assert bad_alias.value.param == "alias"
    with pytest.raises(InvalidArgument, match="margin"):
        client.promote("adapter", promo, "prod", 6, EVAL_SET, margin=-0.5)


def test_alias_moved_meanwhile_is_aborted(tmp_path):
    store = MetadataStore(tmp_path / "meta.db")
    for _ in range(3):
        store.publish(NewVersion("adapter", "a", "m" * 64, 1, [FileRow("f", 1, "f" * 64)]))
    store.set_alias("adapter", "a", "prod", 1)
    store.set_alias("adapter", "a", "prod", 2)  # someone else, after the gate read 1
    with pytest.raises(Aborted, match="retry"):
        store.move_alias_if("adapter", "a", "prod", 3, expected=1)
    assert store.get_artifact("adapter", "a").aliases["prod"] == 2
    with pytest.raises(Aborted):
        store.move_alias_if("adapter", "a", "new", 3, expected=2)
    assert store.move_alias_if("adapter", "a", "prod", 3, expected=2).aliases["prod"] == 3
    store.close()


def test_promote_flow_with_existing_evaluations(client, promo):
    said: list[str] = []
    response = promote_flow(
        client,
        None,
        None,
        kind="adapter",
        ref=f"{promo}@6",
        alias=f"{promo}@staging",
        eval_set=EVAL_SET,
        graders=None,
        margin=0.0,
        say=said.append,
    )
    assert response.artifact.aliases["staging"] == 6
    # A missing evaluation without a trainer to run it: refused, the alias stays.
    with pytest.raises(FailedPrecondition, match="evaluation_missing|no evaluation"):
        promote_flow(client, None, None, kind="adapter", ref=f"{promo}@4", alias="staging",
                     eval_set=EVAL_SET, graders=None, margin=0.0, say=said.append)
    assert client.resolve("adapter", f"{promo}@staging").version == 6


def test_cli_promote(registry, promo):
    runner = CliRunner()
    env = {
        "TUNEPLEX_REGISTRY_TARGET": registry.target,
        "TUNEPLEX_TRAINER_TARGET": "127.0.0.1:1",
        "COLUMNS": "200",
    }

    def tuneplex(*args):
        return runner.invoke(app, [str(a) for a in args], env=env)

    r = tuneplex("adapters", "promote", f"{promo}@6", "--alias", "other-lora@prod", "--eval",
                 EVAL_SET, "--gateway", "")
    assert r.exit_code == 2, r.output
    assert "other-lora" in r.stderr and "--alias prod" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    # An unreachable gateway is said, not fatal.
    r = tuneplex("adapters", "promote", f"{promo}@6", "--alias", "cli", "--eval", EVAL_SET,
                 "--gateway", "http://127.0.0.1:1")
    assert r.exit_code == 0, r.output
    assert f"{promo}@cli -> 6" in r.stdout
    r = tuneplex("adapters", "promote", f"{promo}@3", "--alias", "cli", "--eval", EVAL_SET,
                 "--gateway", "")
    assert r.exit_code == 2 and "promo-lora@3 scores 0.40" in r.stderr
    show = tuneplex("adapters", "show", f"{promo}@cli").stdout
    assert "cli" in show


async def test_async_client_finds_evaluations_and_promotes(registry, promo):
    from services.client.registry import AsyncRegistryClient

    async with AsyncRegistryClient(registry.target, timeout=60) as client:
        found = await client.evaluations("adapter", f"{promo}@2", f"{EVAL_SET}@1")
        assert [v.evaluation.score for v in found] == [0.7]
        assert await client.evaluations("model", f"{promo}@2") == []
        done = await client.promote("adapter", promo, "async", 2, EVAL_SET)
        assert done.artifact.aliases["async"] == 2


# The flow running a missing evaluation as a real eval job on the trainer is in the demo's e2e
# test (tests/e2e/test_demo_story.py: the 2-step adapter's promotion), with the gateway.
