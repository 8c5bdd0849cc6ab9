"""Training runs side by side: ``tuneplex experiments compare REF [REF ...]`` and the demo.

For each adapter or model version: base model, dataset (version, examples, manifest sha256),
method, the hyper-parameters that differ between the versions (the rest on one "same for all"
line), hardware, wall time, tokens/s, peak memory, final and best loss, and each eval set's
newest score with its interval. The figures come from the version's lineage, its
``training_report.json`` (written by the trainer's ``recipes/report.py``) and its EVALUATION
records; ``fetch_experiments`` gathers them, ``build_comparison`` is pure.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from rich.table import Table

from services.client.registry import RegistryClient
from services.common.errors import InvalidArgument, NotFound
from services.common.refs import parse_ref
from services.common.stubs import registry_pb2

REPORT_FILE = "training_report.json"
# Shown in rows of their own, so not again among the hyper-parameters.
OWN_ROWS = {"base_model", "dataset", "validation_dataset", "method", "output_name"}
MAX_VALUE_CHARS = 48


@dataclass(frozen=True)
class Experiment:
    """One trained version and what is known of it."""

    kind: str  # "adapter" | "model"
    version: registry_pb2.ArtifactVersion
    dataset: registry_pb2.ArtifactVersion | None = None
    report: dict[str, Any] | None = None
    evaluations: list[registry_pb2.ArtifactVersion] = field(default_factory=list)  # newest first

    @property
    def ref(self) -> str:
        return f"{self.version.name}@{self.version.version}"


@dataclass(frozen=True)
class Comparison:
    columns: list[str]  # one per version, as pinned `name@version`
    rows: list[tuple[str, list[str]]]  # (what, one cell per version)
    same_for_all: list[tuple[str, str]]  # hyper-parameters every version shares
    notes: list[str] = field(default_factory=list)


# --- gathering -------------------------------------------------------------------------------


def resolve_trained(client: RegistryClient, ref: str) -> tuple[str, registry_pb2.ArtifactVersion]:
    """(kind, version) of ``ref``: an adapter, else a model of that name."""
    name = parse_ref(ref, param="refs").name
    for kind in ("adapter", "model"):
        try:
            client.get(kind, name)
        except NotFound:
            continue
        return kind, client.resolve(kind, ref)  # a missing version or alias says so itself
    raise NotFound(f"no adapter or model named {name!r}", param="refs", code="artifact_not_found")


def fetch_experiments(
    client: RegistryClient, refs: Iterable[str], say: Callable[[str], None] = lambda _: None
) -> list[Experiment]:
    """Resolve each ref and gather its dataset, report and evaluations. The registry has no
    single-file download, so a version holding a report is pulled whole into a temporary folder
    (adapters are a few MB) and only its report is kept."""
    experiments: list[Experiment] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="tuneplex-compare-") as tmp:
        for ref in refs:
            kind, version = resolve_trained(client, ref)
            pinned = f"{version.name}@{version.version}"
            if pinned in seen:
                continue
            seen.add(pinned)
            report = None
            if any(f.path == REPORT_FILE for f in version.manifest.files):
                size = version.manifest.total_size_bytes
                say(f"reading {REPORT_FILE} of {pinned} (pulls the version, {size / 1e6:.1f} MB)")
                dest = Path(tmp) / pinned
                client.pull(kind, pinned, dest)
                report = read_report(dest / REPORT_FILE)
            dataset = None
            if version.lineage.dataset:
                try:
                    dataset = client.resolve("dataset", version.lineage.dataset)
                except NotFound:
                    say(f"{pinned}: its dataset {version.lineage.dataset} is no longer stored")
            evaluations = client.evaluations(kind, pinned)
            experiments.append(Experiment(kind, version, dataset, report, evaluations))
    return experiments


def read_report(path: Path) -> dict[str, Any] | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


# --- the table -------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def metrics_of(e: Experiment) -> dict[str, float]:
    """The report's final metrics, else those the lineage carries (the same figures)."""
    report_metrics = (e.report or {}).get("metrics")
    merged = dict(e.version.lineage.metrics)
    if isinstance(report_metrics, dict):
        merged.update({k: v for k, v in report_metrics.items() if _number(v) is not None})
    return merged


def hyperparameters_of(e: Experiment) -> dict[str, str]:
    """Flat ``{"lora_r": "8", "evaluation.eval_set": ...}``, from the lineage, else the report."""
    values: Any = json_format.MessageToDict(e.version.lineage.hyperparameters)
    if not values and e.report:
        values = e.report.get("hyperparameters") or {}
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        else:
            flat[prefix] = show_value(value)

    for key in sorted(values) if isinstance(values, dict) else []:
        walk(str(key), values[key])
    return {k: v for k, v in flat.items() if k not in OWN_ROWS}


def show_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # a Struct holds every number as a double: 8.0 was 8
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ",".join(show_value(v) for v in value) or "[]"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loss_history(e: Experiment) -> dict[str, list[tuple[float, float]]]:
    """``{"train": [(step, loss)], "eval": [...]}`` from the report (empty when it has none)."""
    history = (e.report or {}).get("loss_history")
    out: dict[str, list[tuple[float, float]]] = {"train": [], "eval": []}
    if not isinstance(history, dict):
        return out
    for which in out:
        for point in history.get(which) or []:
            if isinstance(point, list | tuple) and len(point) == 2:
                step, loss = _number(point[0]), _number(point[1])
                if step is not None and loss is not None:
                    out[which].append((step, loss))
    return out


def best_loss(e: Experiment) -> str:
    """The lowest eval loss (else train loss) logged, with its step."""
    history = loss_history(e)
    which = "eval" if history["eval"] else "train"
    if not history[which]:
        return ""
    step, loss = min(history[which], key=lambda p: (p[1], p[0]))
    return f"{loss:.4f} ({which}, step {step:g})"


def dataset_cell(e: Experiment) -> str:
    ref = e.version.lineage.dataset
    if e.dataset is None:
        return ref
    return (
        f"{ref} ({e.dataset.dataset.num_examples} examples, "
        f"sha256 {e.dataset.manifest.sha256[:12]})"
    )


def hardware_cell(e: Experiment) -> str:
    hw = (e.report or {}).get("hardware")
    if not isinstance(hw, dict):
        return ""
    if hw.get("device") == "cpu":
        threads = f", {hw['threads']} threads" if hw.get("threads") else ""
        return f"cpu {hw.get('cpu') or ''}".strip() + threads
    gpus = f" x{hw['gpus']}" if hw.get("gpus") else ""
    return f"{hw.get('device', '')}{gpus}"


def published_weights(e: Experiment) -> str:
    report = e.report or {}
    step = _number(report.get("published_step"))
    if step is None:
        return ""
    because = report.get("published_because")
    return f"step {step:g}" + (f" ({because})" if isinstance(because, str) and because else "")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def memory(n: float | None) -> str:
    if n is None:
        return ""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def newest_evaluations(e: Experiment) -> dict[str, registry_pb2.EvaluationInfo]:
    """Eval-set name -> the newest evaluation of this version on it."""
    newest: dict[str, registry_pb2.EvaluationInfo] = {}
    for record in e.evaluations:  # newest first
        info = record.evaluation
        newest.setdefault(info.eval_set.partition("@")[0], info)
    return newest


def build_comparison(experiments: list[Experiment]) -> Comparison:
    if not experiments:
        raise InvalidArgument("name at least one adapter or model version", param="refs")
    rows: list[tuple[str, list[str]]] = []

    def row(what: str, cells: list[str]) -> None:
        if any(cells):
            rows.append((what, cells))

    metrics = [metrics_of(e) for e in experiments]

    def metric(name: str) -> list[float | None]:
        return [_number(m.get(name)) for m in metrics]

    row("kind", [e.kind for e in experiments])
    row("base model", [e.version.lineage.base_model for e in experiments])
    row("dataset", [dataset_cell(e) for e in experiments])
    row("validation dataset", [e.version.lineage.validation_dataset for e in experiments])
    row("method", [str((e.report or {}).get("method") or "") for e in experiments])

    params = [hyperparameters_of(e) for e in experiments]
    # A version pushed by hand records none: it would make every setting "differ".
    recorded = [p for p in params if p]
    same: list[tuple[str, str]] = []
    for name in sorted(set().union(*params)):
        values = {p.get(name, "") for p in recorded}
        if len(experiments) > 1 and len(values) == 1:
            same.append((name, values.pop()))
        else:
            row(name, [cut(p[name]) if name in p else "-" for p in params])

    row("hardware", [hardware_cell(e) for e in experiments])
    row("steps", [str((e.report or {}).get("steps") or "") for e in experiments])
    # A job that scored its checkpoints may have published an earlier step than its last.
    row("published weights", [published_weights(e) for e in experiments])
    row("wall time", [duration(s) for s in metric("wall_time_seconds")])
    # Steady speed leaves out the first step's warm-up; a run of one step has only the mean.
    steady, mean = metric("steady_tokens_per_second"), metric("tokens_per_second")
    speeds = [s or t for s, t in zip(steady, mean, strict=True)]
    row("tokens/s", ["" if s is None else f"{s:,.0f}" for s in speeds])
    row("peak memory", [memory(n) for n in metric("peak_memory_bytes")])
    row("final train loss", [_loss(v) for v in metric("train_loss")])
    row("final eval loss", [_loss(v) for v in metric("eval_loss")])
    row("best loss", [best_loss(e) for e in experiments])

    notes: list[str] = []
    evals = [newest_evaluations(e) for e in experiments]
    for set_name in sorted(set().union(*evals)):
        infos = [ev.get(set_name) for ev in evals]
        present = [i for i in infos if i is not None]
        uniform = len({(i.eval_set, i.graders_sha256) for i in present}) == 1
        if not uniform:
            notes.append(
                f"{set_name}: scored on different eval-set versions or graders; scores compare "
                "only on the same ones"
            )
        cells = []
        for info in infos:
            if info is None:
                cells.append("-")
                continue
            cell = f"{info.score:.3f} [{info.ci_low:.3f}, {info.ci_high:.3f}]"
            if not uniform:
                cell += f" {info.eval_set} graders {info.graders_sha256[:8]}"
            cells.append(cell)
        label = present[0].eval_set if uniform else set_name
        row(f"eval {label}", cells)
    for e, p in zip(experiments, params, strict=True):
        if e.report is None:
            notes.append(f"{e.ref} has no {REPORT_FILE}: figures from its lineage only")
        if not p:
            notes.append(f"{e.ref} records no hyper-parameters")
    return Comparison([e.ref for e in experiments], rows, same, notes)


def cut(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def comparison_table(comparison: Comparison) -> Table:
    """One column per version, one row per figure; the shared hyper-parameters as caption."""
    table = Table(title="experiments", title_justify="left", caption_justify="left")
    table.add_column("", style="bold")
    for column in comparison.columns:
        table.add_column(column)
    for what, cells in comparison.rows:
        table.add_row(what, *cells)
    lines = []
    if comparison.same_for_all:
        shared = ", ".join(f"{k}={cut(v)}" for k, v in comparison.same_for_all)
        lines.append(f"same for all: {shared}")
    lines += comparison.notes
    if lines:
        table.caption = "\n".join(lines)
    return table


# --- the plot --------------------------------------------------------------------------------


def plot_loss_curves(experiments: list[Experiment], path: Path) -> list[str]:
    """Every version's train (line) and eval (dots) loss in one PNG; returns the versions that
    had a loss history to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: list[str] = []
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for e in experiments:
        history = loss_history(e)
        if not history["train"] and not history["eval"]:
            continue
        drawn.append(e.ref)
        color = None  # a version's eval dots take the colour of its train line
        if history["train"]:
            (line,) = ax.plot(*zip(*history["train"], strict=True), label=f"{e.ref} train")
            color = line.get_color()
        if history["eval"]:
            steps, losses = zip(*history["eval"], strict=True)
            ax.plot(steps, losses, "o--", color=color, label=f"{e.ref} eval")
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)
    return drawn
