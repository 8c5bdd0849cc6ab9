"""Writes docs/training-spec.md from the declaration of the training spec
(``services/common/training_spec.py``), so the reference cannot drift.

    .venv/bin/python scripts/gen_spec_docs.py          # rewrite
    .venv/bin/python scripts/gen_spec_docs.py --check  # exit 1 if out of date (tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

from generated_doc import write_or_check

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "training-spec.md"
TITLES = {
    "": "Job",
    "lora": "LoRA (`training.lora`)",
    "hyperparameters": "Optimisation (`training.hyperparameters`)",
    "evaluation": "Evaluation (`training.evaluation`)",
}
# What a section's table cannot say: how its settings work together.
NOTES = {
    "evaluation": [
        "Optional: without an `eval_set` the job is not evaluated. With one, the published",
        "version is scored on it by the graders (`summary.json` of an `evaluation` version in",
        "the registry; the job's metrics get `eval_score`, `eval_ci_low`, `eval_ci_high`).",
        "`each_checkpoint` first scores every complete checkpoint in the worker and publishes",
        "the best one (the training report says which step and why). `promote_alias` then asks",
        "the registry's gate to move the alias; a refusal leaves the version published and is",
        "logged with both scores (metric `promoted` 0 or 1). Flags: `--eval-data`,",
        "`--eval-grader FILE` (repeatable), `--eval-each-checkpoint`, `--promote-alias`,",
        "`--promote-margin`, `--eval-max-tokens`, ...",
        "",
    ]
}


def _method_notes() -> list[str]:
    """Which of the section's settings each adapter method beside LoRA reads, from the
    declaration (``UNUSED_SETTINGS``)."""
    from services.common.training_spec import PEFT_METHODS, UNUSED_SETTINGS, param_of

    lines = [
        "Every adapter method reads `target_modules`; LoHa and LoKr read `lora_r` and `lora_alpha`",
        "as their rank and scale and `lora_dropout` as their rank dropout; IA3 learns one vector",
        "per module (the MLP's modules scaled at their input). A setting a method does not read",
        "is refused when set:",
        "",
    ]
    for method in PEFT_METHODS:
        unused = ", ".join(f"`{param_of(name)}`" for name in UNUSED_SETTINGS[method])
        lines.append(f"- `{method}`: {unused}")
    return [*lines, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    sys.path.insert(0, str(REPO))
    from services.common import training_spec_text as text
    from services.common.training_spec import SETTINGS, param_of, section_of

    lines = [
        "# Training spec reference",
        "",
        "Generated from `services/common/training_spec.py` by `scripts/gen_spec_docs.py`; do not",
        "edit. Each setting is a field of `TrainingConfig` (what the recipes read, and the keys of",
        "`demo.tune` runs and of the SDK's `training_spec(**settings)`), travels in one field of",
        "`tuneplex.trainer.v1.TrainingSpec` (its path is the `param` of an error about it) and is",
        "a `tuneplex jobs create` flag. On the wire a zero value (0, empty, false) means the",
        "default, except for `optional` fields (`lora.dropout`, `warmup_ratio`, `seed`,",
        "`padding_free`, `num_gpus`), where 0 (or false) is a value. Every number must be finite",
        "and within its range.",
        "",
    ]
    notes = NOTES | {"lora": _method_notes()}
    for section, title in TITLES.items():
        lines += [f"## {title}", "", *notes.get(section, [])]
        lines += [
            "| setting | proto field | default | allowed | meaning |",
            "|---|---|---|---|---|",
        ]
        for name, field in SETTINGS.items():
            if section_of(name).partition(".")[0] != section:
                continue
            lines.append(
                f"| `{name}` | `{param_of(name)}` | {_cell(text.default_text(name))} | "
                f"{_cell(text.allowed_text(name))} | {_cell(field.description or '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    return write_or_check(DOC, render(), "gen_spec_docs.py")


if __name__ == "__main__":
    sys.exit(main())
