"""`tuneplex adapters ...`: LoRA adapters in the registry."""

from __future__ import annotations

from pathlib import Path

import typer

from services.client.cli.console import err, fail_with, out
from services.client.cli.registry_views import (
    artifacts_table,
    facts,
    registry_client,
    version_table,
    versions_table,
)
from services.common.errors import TuneplexError

app = typer.Typer(
    help="List, inspect, push, pull, alias and delete adapters.", no_args_is_help=True
)


@app.command("list")
def list_() -> None:
    """List adapters with their latest version and aliases."""
    try:
        with registry_client() as client:
            artifacts = client.list("adapter")
    except TuneplexError as exc:
        fail_with(exc)
    out.print(artifacts_table(artifacts, "adapters"))


@app.command()
def show(ref: str = typer.Argument(..., help="`name`, `name@3` or `name@alias`.")) -> None:
    """Show one version (the latest for a bare name) and the artifact's versions."""
    try:
        with registry_client() as client:
            version = client.resolve("adapter", ref)
            versions = client.versions("adapter", version.name)
    except TuneplexError as exc:
        fail_with(exc)
    out.print(version_table(version))
    out.print(versions_table(versions, "versions"))


@app.command()
def push(
    folder: Path = typer.Argument(
        ..., help="PEFT folder: adapter_config.json + adapter_model.safetensors."
    ),
    name: str = typer.Option(..., "--name", "-n", help="Adapter name."),
    base_model: str = typer.Option(
        None, help="Base model in the registry (default: from adapter_config.json)."
    ),
    description: str = typer.Option("", help="A line about the adapter."),
) -> None:
    """Validate and upload an adapter folder as the next version of NAME."""
    try:
        with registry_client() as client:
            version = client.push(
                "adapter", name, folder, base_model=base_model, description=description
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
    """Download and verify an adapter version into DEST."""
    try:
        with registry_client() as client:
            version = client.pull("adapter", ref, dest)
    except TuneplexError as exc:
        fail_with(exc)
    err.print(f"pulled {version.name}@{version.version} ({version.manifest.sha256[:12]})")
    out.print(str(dest), highlight=False)


@app.command()
def alias(
    name: str = typer.Argument(..., help="Adapter name."),
    alias_: str = typer.Argument(..., metavar="ALIAS", help="Alias, e.g. prod."),
    version: int = typer.Argument(..., help="Version the alias points to."),
) -> None:
    """Point ALIAS at VERSION of NAME (atomically; created if new)."""
    try:
        with registry_client() as client:
            artifact = client.set_alias("adapter", name, alias_, version)
    except TuneplexError as exc:
        fail_with(exc)
    out.print(f"{name}@{alias_} -> {artifact.aliases[alias_]}", highlight=False)


@app.command()
def delete(
    name: str = typer.Argument(..., help="Adapter name."),
    version: int = typer.Option(0, help="Only this version (default: the whole adapter)."),
    force: bool = typer.Option(False, help="Also when aliases point at the version."),
) -> None:
    """Delete a version, or the whole adapter."""
    try:
        with registry_client() as client:
            client.delete("adapter", name, version=version, force=force)
    except TuneplexError as exc:
        fail_with(exc)
    out.print(f"deleted {name}" + (f"@{version}" if version else ""), highlight=False)
