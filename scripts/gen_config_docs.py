"""Writes docs/configuration.md from the settings classes, so the reference cannot drift.

    .venv/bin/python scripts/gen_config_docs.py          # rewrite
    .venv/bin/python scripts/gen_config_docs.py --check  # exit 1 if out of date (tests)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from generated_doc import write_or_check
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "configuration.md"
SECTIONS = [
    ("Registry", "services.registry.settings", "RegistrySettings"),
    ("Trainer", "services.trainer.settings", "TrainerSettings"),
    ("Gateway", "services.gateway.settings", "GatewaySettings"),
    ("CLI and SDK", "services.client.config", "ClientSettings"),
]


def _default(field) -> str:
    if field.default_factory is not None:
        name = getattr(field.default_factory, "__name__", "")
        if name == "default_home":
            return "`$TUNEPLEX_HOME` or `~/.tuneplex`"
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return f"`{value}`"


def render() -> str:
    sys.path.insert(0, str(REPO))
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `scripts/gen_config_docs.py`; do not edit.",
        "Every service reads its settings from environment variables once, at start. Lists are",
        'given as JSON (`TUNEPLEX_GATEWAY_BASE_MODELS=\'["smollm2-135m-instruct"]\'`).',
        "",
    ]
    for title, module, cls_name in SECTIONS:
        cls = getattr(importlib.import_module(module), cls_name)
        prefix = cls.model_config.get("env_prefix", "")
        lines += [f"## {title}", "", f"`{module}.{cls_name}`", ""]
        lines += ["| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{prefix}{name.upper()}` | {_default(field)} | {desc} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    return write_or_check(DOC, render(), "gen_config_docs.py")


if __name__ == "__main__":
    sys.exit(main())
