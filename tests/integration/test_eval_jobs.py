"""Eval jobs through the trainer's gRPC API with the real registry: SmolLM2-135M answers a small
eval set in the worker (backend local: no gateway needed), graders score it, and an EVALUATION
version lands in the registry pinned to what was scored on what. A SIGKILLed worker resumes
without grading an item twice; an eval set whose reference query writes fails before anything
is generated, naming the item.

The graders are chosen for a known answer whatever the model says: one that always passes and
one that never does, so every item scores exactly 0.5.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from services.client.registry import RegistryClient
from services.client.trainer import TrainerClient, eval_spec
from services.common.eval_summary import RESULTS_FILE, SUMMARY_FILE
from services.common.stubs import registry_pb2, trainer_pb2
from tests.helpers.sample_data import write_jsonl
from tests.helpers.trainer_process import TrainerServer, start_trainer, wait_for_final

pytestmark = pytest.mark.integration

BASE = "smollm2-135m-instruct"
EVAL_SET = "eval-jobs-caps"
NUM_ITEMS = 12
ALWAYS = {"type": "regex", "name": "always", "input": "{{sample.output_text}}", "pattern": ".*"}
NEVER = {
    "type": "string_check",
    "name": "never",
    "input": "{{sample.output_text}}",
    "reference": "{{item.impossible}}",
    "operation": "eq",
}
GRADERS = [ALWAYS, NEVER]
JOB_TIMEOUT_S = 600
DB = "eval-jobs-db"


def items() -> list[dict]:
    words = ["apple", "river", "stone", "cloud", "green", "music"]
    return [
        {
            "input": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Say {words[i % 6]}."},
            ],
            "impossible": f"no model writes this exact line #{i}",
        }
        for i in range(NUM_ITEMS)
    ]


@pytest.fixture(scope="module")
def stack(registry_with_base_model, tmp_path_factory):
    """The session's registry with this module's eval sets, chat data and a SQLite database,
    and one trainer for every test here."""
    data = tmp_path_factory.mktemp("eval-jobs-data")
    db = data / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        conn.executemany("INSERT INTO orders (total) VALUES (?)", [(9.5,), (20.0,)])
    writes = [
        {"input": "How many orders are there?", "sql": "SELECT COUNT(*) FROM orders"},
        {"input": "Remove every order.", "sql": "DELETE FROM orders"},
    ]
    with RegistryClient(registry_with_base_model.target) as client:
        client.push("dataset", EVAL_SET, write_jsonl(items(), data / "caps-eval.jsonl"))
        client.push("dataset", DB, db)
        client.push("dataset", "eval-jobs-writes", write_jsonl(writes, data / "writes.jsonl"))
    trainer = start_trainer(
        tmp_path_factory.mktemp("eval-jobs-trainer"), registry_with_base_model.target
    )
    try:
        yield registry_with_base_model, trainer
    finally:
        trainer.stop()


def local_eval(**settings) -> trainer_pb2.EvalSpec:
    settings.setdefault("max_tokens", 8)
    return eval_spec(BASE, EVAL_SET, GRADERS, backend="local", **settings)


def pulled_record(
    registry_target: str, ref: str, dest: Path
) -> tuple[registry_pb2.ArtifactVersion, dict, list[dict]]:
    with RegistryClient(registry_target) as client:
        version = client.pull("evaluation", ref, dest)
    summary = json.loads((dest / SUMMARY_FILE).read_text())
    results = [json.loads(line) for line in (dest / RESULTS_FILE).read_text().splitlines()]
    return version, summary, results


def worker_pids(server: TrainerServer) -> list[int]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p.pid for p in children if "services.trainer.worker" in " ".join(p.cmdline())]


def graded(results_file: Path) -> dict[int, int]:
    """index -> attempt of the whole lines in a results file."""
    found = {}
    for line in results_file.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        found[r["index"]] = r["attempt"]
    return found


def test_an_eval_job_survives_a_killed_worker_and_publishes_a_pinned_record(stack, tmp_path):
    """One job carries it all (each attempt loads the model and generates on the shared CPU):
    admission pins what is scored, progress streams with the running score, a SIGKILLed worker
    resumes without grading an item twice, and the record in the registry is right."""
    registry, trainer = stack
    with TrainerClient(trainer.target) as client:
        # Four items in flight: the kill after the first batch leaves most items to do.
        request = local_eval(concurrency=4)
        job = client.create_job(request, idempotency_key="eval-main")
        assert job.spec.evaluation.model == f"{BASE}@1"  # pinned at admission
        assert job.spec.evaluation.eval_set == f"{EVAL_SET}@1"
        assert job.spec.evaluation.output_name == EVAL_SET  # defaults to the eval set's name
        assert job.estimated_peak_memory_bytes > 0
        assert client.create_job(request, idempotency_key="eval-main").id == job.id  # AIP-155
        results_file = trainer.home / "trainer" / "jobs" / job.id / "eval" / "results.jsonl"
        before_kill: dict[int, int] = {}
        events = []
        for event in client.stream_events(job.id):
            events.append(event)
            if before_kill or event.WhichOneof("kind") != "progress":
                continue
            if 0 < event.progress.step < NUM_ITEMS:
                (pid,) = worker_pids(trainer)
                os.kill(pid, signal.SIGKILL)
                psutil.Process(pid).wait(10)
                before_kill = graded(results_file)
        job = wait_for_final(client, job.id, JOB_TIMEOUT_S)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, (job, trainer.log()[-3000:])
    assert job.output == f"{EVAL_SET}@1"
    assert job.metrics["score"] == pytest.approx(0.5)
    assert (job.metrics["ci_low"], job.metrics["ci_high"]) == (pytest.approx(0.5),) * 2
    assert job.metrics["num_errors"] == 0

    assert 0 < len(before_kill) < NUM_ITEMS, "the worker was killed mid-way"
    assert job.attempt == 2
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert f"resuming: {len(before_kill)} of {NUM_ITEMS} items already graded" in logs, logs
    progress = [e.progress for e in events if e.WhichOneof("kind") == "progress"]
    assert progress[-1].step == NUM_ITEMS == progress[-1].total_steps
    assert all(p.running_score == pytest.approx(0.5) for p in progress)
    assert all(p.total_steps == NUM_ITEMS for p in progress)
    states = [e.state_changed.state for e in events if e.WhichOneof("kind") == "state_changed"]
    assert states.count(trainer_pb2.JOB_STATE_RUNNING) == 2  # one per attempt

    version, summary, results = pulled_record(registry.target, job.output, tmp_path / "rec")
    assert version.lineage.base_model == f"{BASE}@1"
    assert version.lineage.eval_set == f"{EVAL_SET}@1"
    assert version.lineage.job_id == job.id
    info = version.evaluation
    assert (info.model, info.eval_set, info.num_items) == (f"{BASE}@1", f"{EVAL_SET}@1", NUM_ITEMS)
    assert info.model_kind == registry_pb2.ARTIFACT_KIND_MODEL
    assert info.score == pytest.approx(0.5)
    assert dict(info.grader_scores) == {"always": pytest.approx(1.0), "never": pytest.approx(0.0)}
    assert summary["backend"] == "local" and summary["sampling"]["max_tokens"] == 8
    assert sorted(r["index"] for r in results) == list(range(NUM_ITEMS)), "each item once"
    attempts = {r["index"]: r["attempt"] for r in results}
    assert {i: attempts[i] for i in before_kill} == dict.fromkeys(before_kill, 1)
    assert all(attempts[i] == 2 for i in set(range(NUM_ITEMS)) - set(before_kill))
    assert all(r["grader_scores"] == {"always": 1.0, "never": 0.0} for r in results)
    # The model really answered: greedy text for (nearly) every item.
    assert sum(bool(r["output_text"].strip()) for r in results) >= NUM_ITEMS - 1

    # The CLI reads the same record back.
    env = {"TUNEPLEX_REGISTRY_TARGET": registry.target}
    from services.client.cli.app import app

    shown = CliRunner().invoke(app, ["evals", "show", job.output, "--items", "3"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "0.500" in shown.output and f"{BASE}@1" in shown.output
    listed = CliRunner().invoke(app, ["evals", "list", EVAL_SET], env=env)
    assert listed.exit_code == 0 and f"{EVAL_SET}@1" in listed.output, listed.output


def test_a_reference_query_that_writes_fails_the_job_naming_the_item(stack, tmp_path):
    """Through the CLI (`evals run --watch`): the pre-flight refuses the eval set before any
    answer is generated, and the user reads which item and why."""
    registry, trainer = stack
    grader = tmp_path / "sql.json"
    sql = {"type": "sql_execution", "name": "sql", "reference": "{{item.sql}}", "database": DB}
    grader.write_text(json.dumps(sql))
    from services.client.cli.app import app

    ran = CliRunner().invoke(
        app,
        ["evals", "run", "--model", BASE, "--data", "eval-jobs-writes", "--grader", str(grader)]
        + ["--backend", "local", "--max-tokens", "8", "--watch"],
        env={
            "TUNEPLEX_REGISTRY_TARGET": registry.target,
            "TUNEPLEX_TRAINER_TARGET": trainer.target,
        },
    )
    assert ran.exit_code == 1, ran.output
    assert "reference_invalid" in ran.output and "item 2" in ran.output, ran.output
    job_id = ran.stdout.split()[0]
    with TrainerClient(trainer.target) as client:
        job = client.get_job(job_id)
        events = list(client.stream_events(job.id))
    assert job.spec.evaluation.graders[0]["database"] == DB
    assert job.state == trainer_pb2.JOB_STATE_FAILED, job
    assert job.error.code == "reference_invalid", job.error
    assert "item 2" in job.error.message, job.error.message
    assert job.error.param == "evaluation.eval_set"
    assert job.attempt == 1  # the job is wrong: no retry
    states = [e.state_changed.state for e in events if e.WhichOneof("kind") == "state_changed"]
    assert trainer_pb2.JOB_STATE_RUNNING not in states, "refused before any answer was generated"
