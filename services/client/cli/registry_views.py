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
        kind = "DoRA" if a.use_dora else "LoRA"
        return f"{kind} r={a.rank} alpha={a.alpha:g} on {a.base_model}"
    if which == "dataset":
        d = version.dataset
        return f"{d.num_examples} examples, {FORMATS.get(d.format, '?')}"
    if which == "model":
        m = version.model
        return ", ".join(x for x in (m.architecture, m.dtype, m.merged_from_adapter) if x)
    return ""


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
    lin = version.lineage
    rows += [
        ("job", lin.job_id),
        ("dataset", lin.dataset),
        ("validation dataset", lin.validation_dataset),
        ("base model", lin.base_model),
        ("merged adapter", lin.adapter),
    ]
    if lin.metrics:
        rows.append(("metrics", ", ".join(f"{k}={v:g}" for k, v in sorted(lin.metrics.items()))))
    for f in version.manifest.files:
        rows.append(("file", f"{f.path}  {human_size(f.size_bytes)}  {f.sha256[:12]}"))
    for key, value in rows:
        if value:
            table.add_row(key, value)
    return table
