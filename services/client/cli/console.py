"""Output and exit conventions shared by every CLI verb: results on stdout, one clear line on
stderr for a failure, exit code 2 for bad input and 1 for everything else."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, TuneplexError

out = Console()
err = Console(stderr=True)

USAGE_ERRORS = (InvalidArgument, NotFound, FailedPrecondition)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fail_with(exc: TuneplexError) -> NoReturn:
    fail(exc.message, 2 if isinstance(exc, USAGE_ERRORS) else 1)


def is_tty() -> bool:
    return sys.stdout.isatty()
