"""`tuneplex adapters ...`: LoRA adapters in the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from services.client.cli.console import err, fail, fail_with, out
from services.client.cli.registry_views import (
    artifacts_table,
    facts,
    registry_client,
    version_table,
    versions_table,
)
from services.client.config import ClientSettings
from services.common.errors import InvalidArgument, TuneplexError

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
def promote(
    ref: str = typer.Argument(..., help="The candidate: `name`, `name@4` or `name@alias`."),
    alias_: str = typer.Option(..., "--alias", help="Alias to move, e.g. prod."),
    eval_set: str = typer.Option(..., "--eval", help="Eval set that gates the move."),
    margin: float = typer.Option(
        0.0, help="The candidate must score at least the holder's score plus this."
    ),
    grader: list[Path] = typer.Option(
        None,
        "--grader",
        help="JSON file of a grader (or a list of them); default: the graders of the newest "
        "evaluation on the eval set.",
    ),
    gateway: str = typer.Option(
        None,
        help="Gateway to warm the candidate on and refresh (default: the configured gateway; "
        "'' for none).",
    ),
) -> None:
    """Move ALIAS to REF if its evaluation on EVAL beats the current holder's; missing
    evaluations are run on the trainer first, and the gateway is warmed and refreshed."""
    from services.client.gateway import GatewayAdmin
    from services.client.promotion import promote as promote_version
    from services.client.trainer import TrainerClient

    settings = ClientSettings()
    url = settings.gateway_url if gateway is None else gateway
    try:
        graders = [g for path in grader or [] for g in _graders_in(path)] or None
        with registry_client() as registry, TrainerClient(
            settings.trainer_target, api_key=settings.api_key
        ) as trainer:
            admin = GatewayAdmin(url, api_key=settings.api_key) if url else None
            try:
                response = promote_version(
                    registry,
                    trainer,
                    admin,
                    kind="adapter",
                    ref=ref,
                    alias=alias_,
                    eval_set=eval_set,
                    graders=graders,
                    margin=margin,
                    say=lambda line: err.print(line, highlight=False),
                )
            finally:
                if admin is not None:
                    admin.close()
    except TuneplexError as exc:
        fail_with(exc)
    artifact = response.artifact
    alias = alias_.rpartition("@")[2]
    moved_to = artifact.aliases[alias]
    line = f"{artifact.name}@{alias} -> {moved_to}"
    if response.previous_version and response.previous_version != moved_to:
        cand, held = response.candidate_evaluation, response.holder_evaluation
        line += (
            f" (was {response.previous_version}; {cand.evaluation.score:.3f} vs "
            f"{held.evaluation.score:.3f})"
        )
    out.print(line, highlight=False)


def _graders_in(path: Path) -> list[dict[str, Any]]:
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", 2)
    except ValueError as exc:
        raise InvalidArgument(f"{path.name}: not JSON ({exc})", param="graders") from None
    specs = value if isinstance(value, list) else [value]
    if not all(isinstance(s, dict) for s in specs):
        raise InvalidArgument(
            f"{path.name}: a grader file holds one grader object or a list of them",
            param="graders",
        )
    return specs


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
