"""`tuneplex datasets ...`: datasets in the registry: training data, eval sets (JSONL of
`{"input": ...}` items) and the SQLite databases `sql_execution` graders query. The registry
tells the formats apart and checks each file; the CLI sends the file as it is."""

from __future__ import annotations

from pathlib import Path

import typer

from services.client.cli.console import err, fail_with, out
from services.client.cli.registry_views import (
    artifacts_table,
    facts,
    name_from_file,
    registry_client,
)
from services.common.errors import TuneplexError

app = typer.Typer(
    help="Upload and list datasets: training data, eval sets and SQLite databases.",
    no_args_is_help=True,
)


@app.command()
def upload(
    file: Path = typer.Argument(
        ...,
        help="A JSONL file (chat `messages`, prompt/completion, text, or eval items with "
        "`input`), or a SQLite database (.db, .sqlite, .sqlite3) for sql_execution graders.",
    ),
    name: str = typer.Option(None, help="Dataset name (default: from the file name)."),
    description: str = typer.Option("", help="A line about the data."),
) -> None:
    """Validate and upload FILE as the next version of a dataset."""
    name = name or name_from_file(file.stem)
    try:
        with registry_client() as client:
            version = client.push("dataset", name, file, description=description)
    except TuneplexError as exc:
        fail_with(exc)
    err.print(f"uploaded {facts(version)}")
    out.print(f"{version.name}@{version.version}", highlight=False)


@app.command("list")
def list_() -> None:
    """List datasets."""
    try:
        with registry_client() as client:
            artifacts = client.list("dataset")
    except TuneplexError as exc:
        fail_with(exc)
    out.print(artifacts_table(artifacts, "datasets"))
