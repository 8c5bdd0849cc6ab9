"""`tuneplex evals ...`: score an adapter or model on an eval set (an eval job on the trainer)
and read the EVALUATION records it publishes in the registry."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from services.client.cli.console import err, fail, fail_with, out
from services.client.cli.jobs import _client, _report_final, watch_job
from services.client.cli.registry_views import registry_client, when
from services.client.trainer import EVAL_BACKENDS, eval_spec
from services.common.errors import InvalidArgument, TuneplexError
from services.common.eval_summary import RESULTS_FILE, SUMMARY_FILE
from services.common.stubs import registry_pb2

app = typer.Typer(help="Score models and adapters on eval sets.", no_args_is_help=True)

# Characters of a model answer shown per item by `evals show`.
ANSWER_CHARS = 160


def read_graders(files: list[Path]) -> list[dict[str, Any]]:
    """The grader objects of ``files``: each holds one JSON object or an array of them."""
    graders: list[dict[str, Any]] = []
    for file in files:
        try:
            value = json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidArgument(f"cannot read grader file {file}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise InvalidArgument(
                f"grader file {file} is not JSON (line {exc.lineno}: {exc.msg})"
            ) from None
        found = value if isinstance(value, list) else [value]
        if not found or not all(isinstance(g, dict) for g in found):
            raise InvalidArgument(
                f"grader file {file} must hold a grader object or an array of them"
            )
        graders.extend(found)
    return graders


@app.command()
def run(
    model: str = typer.Option(..., "--model", "-m", help="Adapter or model: `name`, `name@3`."),
    data: str = typer.Option(..., "--data", "-d", help="Eval set (a dataset of eval items)."),
    grader: list[Path] = typer.Option(
        ..., "--grader", "-g", help="JSON file with a grader object or an array of them."
    ),
    max_tokens: int = typer.Option(0, help="Tokens per answer (0: 256)."),
    temperature: float = typer.Option(None, help="Sampling temperature (default 0: greedy)."),
    top_p: float = typer.Option(None, help="Nucleus sampling (default 1)."),
    seed: int = typer.Option(None, help="Sampling seed (default 42)."),
    concurrency: int = typer.Option(0, help="Items in flight at once (0: 16)."),
    backend: str = typer.Option(
        "auto", help="auto (the gateway when it serves the model), gateway or local."
    ),
    name: str = typer.Option("", "--name", help="Record name (default: the eval set's)."),
    idempotency_key: str = typer.Option("", help="Same key again returns the same job."),
    watch_: bool = typer.Option(False, "--watch", help="Follow the job until it ends."),
) -> None:
    """Queue an eval job; prints its id (with --watch, the record it published)."""
    if backend not in EVAL_BACKENDS:
        fail(f"--backend must be one of {', '.join(EVAL_BACKENDS)}", 2)
    try:
        spec = eval_spec(
            model,
            data,
            read_graders(grader),
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            concurrency=concurrency,
            backend=backend,
            output_name=name,
        )
        with _client() as client:
            job = client.create_job(spec, idempotency_key=idempotency_key)
            out.print(job.id, highlight=False)
            e = job.spec.evaluation
            err.print(f"queued: {e.model} on {e.eval_set} -> {e.output_name}", highlight=False)
            if watch_:
                final = watch_job(client, job.id)
                _report_final(final)
                if final.metrics:
                    m = final.metrics
                    out.print(
                        f"score {m['score']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]",
                        highlight=False,
                    )
    except TuneplexError as exc:
        fail_with(exc)


def score_text(info: registry_pb2.EvaluationInfo) -> str:
    return f"{info.score:.3f} [{info.ci_low:.3f}, {info.ci_high:.3f}]"


@app.command("list")
def list_(
    eval_set: str = typer.Argument(None, help="Only records of this eval set (its name)."),
) -> None:
    """List evaluation records, newest first."""
    try:
        with registry_client() as client:
            versions = [
                v for a in client.list("evaluation") for v in client.versions("evaluation", a.name)
            ]
    except TuneplexError as exc:
        fail_with(exc)
    if eval_set:
        wanted = eval_set.split("@")[0]
        versions = [v for v in versions if v.evaluation.eval_set.split("@")[0] == wanted]
    versions.sort(key=lambda v: (v.create_time.seconds, v.create_time.nanos), reverse=True)
    table = Table(title="evaluations", title_justify="left")
    # Record refs are what users copy into `evals show`: never cut them.
    longest = max((len(f"{v.name}@{v.version}") for v in versions), default=6)
    table.add_column("record", no_wrap=True, min_width=longest)
    for column in ("score [95% ci]", "model", "eval set", "items", "errors", "created"):
        # Narrow terminals wrap refs rather than cut them.
        table.add_column(
            column, justify="right" if column in ("items", "errors") else "left", overflow="fold"
        )
    for v in versions:
        info = v.evaluation
        table.add_row(
            f"{v.name}@{v.version}",
            score_text(info),
            info.model,
            info.eval_set,
            str(info.num_items),
            str(info.num_errors),
            when(v.create_time),
        )
    out.print(table)


def lowest(results: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` lowest-scoring items (errors first among equals), in that order."""
    return sorted(results, key=lambda r: (r.get("score", 0.0), r.get("error") is None))[:n]


@app.command()
def show(
    ref: str = typer.Argument(..., help="Evaluation record: `name`, `name@3`."),
    items: int = typer.Option(5, "--items", "-n", help="Lowest-scoring items to show."),
) -> None:
    """Show a record's summary and its lowest-scoring items."""
    try:
        with registry_client() as client, tempfile.TemporaryDirectory() as tmp:
            version = client.pull("evaluation", ref, Path(tmp))
            summary = json.loads((Path(tmp) / SUMMARY_FILE).read_text())
            results = [
                json.loads(line)
                for line in (Path(tmp) / RESULTS_FILE).read_text().splitlines()
                if line.strip()
            ]
    except TuneplexError as exc:
        fail_with(exc)
    info = version.evaluation
    out.print(f"[bold]{version.name}@{version.version}[/]: {info.model} on {info.eval_set}")
    out.print(
        f"score {score_text(info)} over {info.num_items} items, {info.num_errors} errors "
        f"({summary.get('backend', '?')}, {summary.get('seconds', 0):.0f} s)",
        highlight=False,
    )
    for grader_name, score in sorted(info.grader_scores.items()):
        out.print(f"  {grader_name}: {score:.3f}", highlight=False)
    if items <= 0 or not results:
        return
    table = Table(title=f"{min(items, len(results))} lowest-scoring items", title_justify="left")
    for column in ("item", "score", "error", "answer"):
        table.add_column(column)
    for r in lowest(results, items):
        answer = " ".join(str(r.get("output_text", "")).split())
        if len(answer) > ANSWER_CHARS:
            answer = answer[:ANSWER_CHARS] + "..."
        table.add_row(
            str(r.get("index", 0) + 1), f"{r.get('score', 0.0):.3f}", r.get("error") or "", answer
        )
    out.print(table)
