"""Root of the ``tuneplex`` CLI: one sub-command group per resource."""

from __future__ import annotations

import typer

from services.client.cli import adapters, datasets, evals, experiments, jobs, models, stack
from services.client.cli.export import export
from services.common.errors import TuneplexError
from services.common.version import tuneplex_version

app = typer.Typer(
    name="tuneplex",
    help=(
        "Fine-tune LLMs into LoRA adapters and serve many adapters on one base model.\n\n"
        "Run the services with `tuneplex up`; `make demo` tells the whole story."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.add_typer(adapters.app, name="adapters")
app.add_typer(jobs.app, name="jobs")
app.add_typer(evals.app, name="evals")
app.add_typer(experiments.app, name="experiments")
app.command()(export)
app.command()(stack.serve)
app.command()(stack.up)
app.command()(stack.stop)


@app.command()
def version() -> None:
    """Print the tuneplex version."""
    typer.echo(tuneplex_version())


def main() -> None:
    import sys

    from services.client.cli.console import USAGE_ERRORS, err

    try:
        app()
    except TuneplexError as exc:  # raised outside a command's own handling
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, USAGE_ERRORS) else 1)
