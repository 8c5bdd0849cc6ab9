"""The `tuneplex jobs create` flags of a training spec, one per leaf setting of the declaration.

Flags, help and choices come from the declaration in ``services/common/training_spec.py``, so
a new setting is a new flag without a line here. A flag left out stays unset in the spec and
the trainer applies its default (which the help shows), exactly as for any other client. The
settings of a nested config (``evaluation``) are ``--eval-*`` flags that, when any is given,
fill that config's dict; its graders are JSON files.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from services.common.training_spec import NESTED, SETTINGS, field_of
from services.common.training_spec_text import default_text

# Older, shorter names that README and scripts use, and the evaluation's names; every other
# flag is the field's name (a nested one's with its PREFIXES in front).
FLAGS = {
    "output_name": ("--output", "-o"),
    "lora_r": ("--rank", "-r"),
    "lora_alpha": ("--alpha",),
    "learning_rate": ("--lr",),
    "evaluation.eval_set": ("--eval-data",),
    "evaluation.graders": ("--eval-grader",),
    "evaluation.promote_alias": ("--promote-alias",),
    "evaluation.promote_margin": ("--promote-margin",),
}
PREFIXES = {"evaluation": "eval"}
# Settings given as files: the flag names the file, the setting holds what it parses to.
FILE_SETTINGS = {"evaluation.graders"}
# What the CLI fills in for a flag left out: the base model `tuneplex up` pushes.
CLI_DEFAULTS = {"base_model": "smollm2-135m-instruct"}


def parameter_name(name: str) -> str:
    """The Python parameter of a setting (``evaluation.eval_set`` -> ``evaluation__eval_set``)."""
    return name.replace(".", "__")


def _flag(name: str, annotation: Any) -> str:
    root, dot, leaf = name.rpartition(".")
    dashed = "-".join(filter(None, (PREFIXES.get(root, root), leaf))).replace("_", "-")
    return f"--{dashed}/--no-{dashed}" if annotation is bool else f"--{dashed}"


def _option(name: str) -> inspect.Parameter:
    field = field_of(name)
    annotation: Any = field.annotation  # a Literal (method, precision, ...) becomes choices
    if name in FILE_SETTINGS:
        annotation = list[Path]
    elif annotation == tuple[str, ...]:
        annotation = list[str]
    required = field.is_required() and name not in CLI_DEFAULTS
    default = ... if required else CLI_DEFAULTS.get(name)
    shown = "" if required or name in CLI_DEFAULTS else f" Default: {default_text(name)}."
    if name in FILE_SETTINGS:
        shown = " A JSON file holding one object (or a list of them); repeat the flag for more."
    option = typer.Option(
        default,
        *FLAGS.get(name, (_flag(name, annotation),)),
        help=f"{field.description}{shown}",
        show_default=name in CLI_DEFAULTS,
    )
    if default is None:
        annotation = annotation | None
    return inspect.Parameter(
        parameter_name(name), inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def read_json_objects(paths: list[Path], flag: str) -> list[dict[str, Any]]:
    """The JSON objects in ``paths`` (each file one object or a list of them), or a usage error
    naming the file and what is wrong with it."""
    found: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            message = f"cannot read {path}: {exc.strerror}"
            raise typer.BadParameter(message, param_hint=flag) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise typer.BadParameter(f"{path} is not JSON: {exc}", param_hint=flag) from None
        items = data if isinstance(data, list) else [data]
        if not items or not all(isinstance(item, dict) for item in items):
            raise typer.BadParameter(
                f"{path} must hold a JSON object (a grader) or a list of them", param_hint=flag
            )
        found.extend(items)
    return found


def _value(name: str, given: Any) -> Any:
    if name in FILE_SETTINGS:
        return read_json_objects(given, FLAGS[name][0])
    return given


def with_spec_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command(settings, **own)`` as a typer command taking one flag per training setting
    before its own keyword-only parameters; ``settings`` holds the flags that were given (a
    nested config's under its field, as a dict)."""
    own = list(inspect.signature(command).parameters.values())[1:]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        given = {n: kwargs.pop(parameter_name(n)) for n in SETTINGS}
        settings: dict[str, Any] = {}
        for name, value in given.items():
            if value is None or value == []:
                continue
            root, dot, leaf = name.partition(".")
            if dot and root in NESTED:
                settings.setdefault(root, {})[leaf] = _value(name, value)
            else:
                settings[name] = _value(name, value)
        command(settings, **kwargs)

    parameters = [_option(name) for name in SETTINGS]
    parameters += [p.replace(kind=p.KEYWORD_ONLY) for p in own]
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer would read the wrapped signature instead
    return wrapper
