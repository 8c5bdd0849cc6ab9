"""`tuneplex experiments ...`: trained versions side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from services.client.cli.console import err, fail, fail_with, out
from services.client.cli.registry_views import registry_client
from services.client.experiments import (
    build_comparison,
    comparison_table,
    fetch_experiments,
    plot_loss_curves,
)
from services.common.errors import TuneplexError

app = typer.Typer(help="Compare trained adapter and model versions.", no_args_is_help=True)


@app.command()
def compare(
    refs: list[str] = typer.Argument(
        ..., metavar="REF...", help="Adapter or model versions: `name@3`, `name@prod`, `name`."
    ),
    plot: Path = typer.Option(
        None, "--plot", metavar="FILE.png", help="Also draw their loss curves into one PNG."
    ),
) -> None:
    """Base model, dataset, differing hyper-parameters, speed, memory, losses and eval scores
    of each version, one column per version."""
    if plot is not None and plot.suffix.lower() != ".png":
        fail(f"--plot writes a PNG: name a .png file, not {plot.name!r}", 2)
    try:
        with registry_client() as client:
            experiments = fetch_experiments(
                client, refs, say=lambda line: err.print(line, highlight=False)
            )
        comparison = build_comparison(experiments)
    except TuneplexError as exc:
        fail_with(exc)
    out.print(comparison_table(comparison))
    if plot is not None:
        try:
            drawn = plot_loss_curves(experiments, plot)
        except OSError as exc:
            fail(f"cannot write {plot.name}: {exc.strerror}")
        if not drawn:
            fail("no loss history to plot: none of these versions has one in its report", 2)
        err.print(f"loss curves of {', '.join(drawn)} -> {plot}", highlight=False)
