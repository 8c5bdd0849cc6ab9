"""The `tuneplex jobs create` flags of a training spec, one per ``TrainingConfig`` field.

Flags, help and choices come from the declaration in ``services/common/training_spec.py``, so
a new setting is a new flag without a line here. A flag left out stays unset in the spec and
the trainer applies its default (which the help shows), exactly as for any other client.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer

from services.common.training_spec import FIELDS
from services.common.training_spec_text import default_text

# Older, shorter names that README and scripts use; every other flag is the field's name.
FLAGS = {
    "output_name": ("--output", "-o"),
    "lora_r": ("--rank", "-r"),
    "lora_alpha": ("--alpha",),
    "learning_rate": ("--lr",),
}
# What the CLI fills in for a flag left out: the base model `tuneplex up` pushes.
CLI_DEFAULTS = {"base_model": "smollm2-135m-instruct"}


def _flag(name: str, annotation: Any) -> str:
    dashed = name.replace("_", "-")
    return f"--{dashed}/--no-{dashed}" if annotation is bool else f"--{dashed}"


def _option(name: str) -> inspect.Parameter:
    field = FIELDS[name]
    annotation: Any = field.annotation  # a Literal (method, precision, ...) becomes choices
    if annotation == tuple[str, ...]:
        annotation = list[str]
    required = field.is_required() and name not in CLI_DEFAULTS
    default = ... if required else CLI_DEFAULTS.get(name)
    shown = "" if required or name in CLI_DEFAULTS else f" Default: {default_text(name)}."
    option = typer.Option(
        default,
        *FLAGS.get(name, (_flag(name, annotation),)),
        help=f"{field.description}{shown}",
        show_default=name in CLI_DEFAULTS,
    )
    if default is None:
        annotation = annotation | None
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def with_spec_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command(settings, **own)`` as a typer command taking one flag per training setting
    before its own keyword-only parameters; ``settings`` holds the flags that were given."""
    own = list(inspect.signature(command).parameters.values())[1:]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        given = {n: kwargs.pop(n) for n in FIELDS}
        settings = {n: v for n, v in given.items() if v is not None and v != []}
        command(settings, **kwargs)

    parameters = [_option(name) for name in FIELDS] + [p.replace(kind=p.KEYWORD_ONLY) for p in own]
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer would read the wrapped signature instead
    return wrapper
