"""What the registry verbs of the CLI share: the client from settings, and rich views of
artifacts and versions."""

from __future__ import annotations

import datetime as dt
import re

from rich.table import Table

from services.client.config import ClientSettings
from services.client.registry import RegistryClient
from services.common.stubs import registry_pb2

FORMATS = {
    registry_pb2.DATASET_FORMAT_CHAT: "chat",
    registry_pb2.DATASET_FORMAT_PROMPT_COMPLETION: "prompt/completion",
    registry_pb2.DATASET_FORMAT_TEXT: "text",
    registry_pb2.DATASET_FORMAT_EVAL: "eval set",
    registry_pb2.DATASET_FORMAT_SQLITE: "SQLite database",
    registry_pb2.DATASET_FORMAT_PREFERENCE: "preference pairs (DPO)",
    registry_pb2.DATASET_FORMAT_EVAL_ITEMS: "eval rows (item)",
}


def registry_client() -> RegistryClient:
    s = ClientSettings()
    # Unary calls get a deadline; uploads and downloads stream as long as they need.
    return RegistryClient(s.registry_target, api_key=s.api_key, timeout=30)


def name_from_file(stem: str) -> str:
    """`Shop SQL (v2)` -> `shop-sql-v2`: a default artifact name for a file."""
    name = re.sub(r"[^a-z0-9\-_.]+", "-", stem.lower()).strip("-._")
    return name[:63] or "dataset"


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def when(ts) -> str:
    return dt.datetime.fromtimestamp(ts.seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def facts(version: registry_pb2.ArtifactVersion) -> str:
    which = version.WhichOneof("info")
    if which == "adapter":
        a = version.adapter
        kind = "DoRA" if a.use_dora else {"LORA": "LoRA", "": "LoRA"}.get(a.peft_type, a.peft_type)
        if not a.rank:  # IA3: scaling vectors, no rank
            return f"{kind} on {a.base_model}"
        return f"{kind} r={a.rank} alpha={a.alpha:g} on {a.base_model}"
    if which == "dataset":
        d = version.dataset
        if d.format == registry_pb2.DATASET_FORMAT_SQLITE:
            return FORMATS[d.format]
        return f"{d.num_examples} examples, {FORMATS.get(d.format, '?')}"
    if which == "evaluation":
        e = version.evaluation
        return f"{scored(e)}, {e.model} on {e.eval_set}"
    if which == "eval_definition":
        definition = version.eval_definition
        name = definition.display_name or "(no name)"
        return f"{name}: {definition.num_criteria} testing criteria"
    if which == "model":
        m = version.model
        return ", ".join(x for x in (m.architecture, m.dtype, m.merged_from_adapter) if x)
    return ""


def scored(e: registry_pb2.EvaluationInfo) -> str:
    """`0.412 [0.310, 0.520]`: a score with its confidence interval."""
    return f"{e.score:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]"


def artifacts_table(artifacts: list[registry_pb2.Artifact], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("name", "latest", "aliases", "details", "size", "updated"):
        table.add_column(col, justify="right" if col in ("latest", "size") else "left")
    for a in artifacts:
        aliases = ", ".join(f"{k}→{v}" for k, v in sorted(a.aliases.items()))
        table.add_row(
            a.name,
            str(a.latest_version),
            aliases,
            facts(a.latest),
            human_size(a.latest.manifest.total_size_bytes),
            when(a.update_time),
        )
    return table


def versions_table(versions: list[registry_pb2.ArtifactVersion], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("version", "aliases", "details", "size", "sha256", "created"):
        table.add_column(col)
    for v in versions:
        table.add_row(
            str(v.version),
            ", ".join(v.aliases),
            facts(v),
            human_size(v.manifest.total_size_bytes),
            v.manifest.sha256[:12],
            when(v.create_time),
        )
    return table


def version_table(version: registry_pb2.ArtifactVersion) -> Table:
    """Everything about one version: facts, lineage, files."""
    table = Table(
        show_header=False, box=None, title=f"{version.name}@{version.version}", title_justify="left"
    )
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("details", facts(version)),
        ("description", version.description),
        ("aliases", ", ".join(version.aliases)),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(version.labels.items()))),
        ("created", when(version.create_time)),
        ("manifest", version.manifest.sha256),
    ]
    if version.WhichOneof("info") == "adapter":
        a = version.adapter
        rows += [
            ("target modules", ", ".join(a.target_modules)),
            ("modules to save", ", ".join(a.modules_to_save)),
            ("rslora", str(a.use_rslora).lower()),
        ]
    is_evaluation = version.WhichOneof("info") == "evaluation"
    if is_evaluation:
        e = version.evaluation
        per_grader = ", ".join(f"{k}={v:.3f}" for k, v in sorted(e.grader_scores.items()))
        rows += [
            ("score", scored(e)),
            ("model", e.model),
            ("eval set", e.eval_set),
            ("items", f"{e.num_items} ({e.num_errors} errors)"),
            ("graders", e.graders_sha256[:12]),
            ("grader scores", per_grader),
        ]
    lin = version.lineage
    rows += [
        ("job", lin.job_id),
        ("dataset", lin.dataset),
        ("validation dataset", lin.validation_dataset),
        ("base model", lin.base_model),
        # An evaluation's lineage names what it scored: shown above as its model.
        ("merged adapter", "" if is_evaluation else lin.adapter),
        ("eval set", "" if is_evaluation else lin.eval_set),
        ("databases", ", ".join(lin.databases)),
    ]
    if lin.metrics:
        rows.append(("metrics", ", ".join(f"{k}={v:g}" for k, v in sorted(lin.metrics.items()))))
    for f in version.manifest.files:
        rows.append(("file", f"{f.path}  {human_size(f.size_bytes)}  {f.sha256[:12]}"))
    for key, value in rows:
        if value:
            table.add_row(key, value)
    return table
