"""What may be published: the rules per kind, checked as the files stream in.

``plan_upload`` checks the header before a single byte is stored (names, labels, paths,
pickles, required files, size limit) and returns one checker per file; ``UploadPlan.info()``
then turns what the checkers saw into the version's kind-specific facts once every file has
arrived.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from services.common.errors import InvalidArgument, ResourceExhausted, shown
from services.common.eval_definition import DEFINITION_FILE, check_definition
from services.common.eval_summary import RESULTS_FILE, SUMMARY_FILE, EvalSummary
from services.common.labels import check_labels
from services.common.peft_types import ACCEPTED
from services.common.stubs import registry_pb2
from services.registry.adapter_config import (
    merged_adapter_info,
    parse_modules_to_save,
    parse_targets,
)
from services.registry.adapter_tensors import check_weights_type
from services.registry.dataset_check import DatasetCheck
from services.registry.evaluation_check import ResultsCheck, evaluation_info, parse_summary
from services.registry.names import check_file_layout, check_name, is_pickle, kind_name
from services.registry.safetensors_check import SafetensorsCheck
from services.registry.sqlite_check import SqliteCheck, is_sqlite_name
from services.registry.stored_text import CONTROL

SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_FILES = 10_000
MAX_JSON_BYTES = 4 * 1024 * 1024
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class JsonCapture:
    """Keeps a small JSON file (a config) in memory to parse once it is complete."""

    def __init__(self, path: str):
        self.path = path
        self._buf = bytearray()
        self.value: dict = {}

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > MAX_JSON_BYTES:
            raise InvalidArgument(f"{self.path}: over {MAX_JSON_BYTES} bytes", param="files")

    def finish(self) -> None:
        try:
            value = json.loads(self._buf)
        except ValueError as exc:
            raise InvalidArgument(f"{self.path}: invalid JSON ({exc})", param="files") from None
        if not isinstance(value, dict):
            raise InvalidArgument(f"{self.path}: expected a JSON object", param="files")
        self.value = value


class NoCheck:
    def feed(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass


Check = JsonCapture | SafetensorsCheck | DatasetCheck | SqliteCheck | ResultsCheck | NoCheck
Info = (
    registry_pb2.AdapterInfo
    | registry_pb2.DatasetInfo
    | registry_pb2.ModelInfo
    | registry_pb2.EvaluationInfo
    | registry_pb2.EvalDefinitionInfo
)


@dataclass
class UploadPlan:
    kind: str
    header: registry_pb2.UploadHeader
    checks: dict[str, Check]
    info: Callable[[], Info]
    # For adapters: the base model the upload names (header, else adapter_config.json).
    base_model_hint: Callable[[], str] = field(default=lambda: "")
    # For evaluations: summary.json as parsed by ``info()`` (checked against the lineage).
    summary: Callable[[], EvalSummary | None] = field(default=lambda: None)
    # For adapters: the shape of each tensor in the weights (checked against the base model).
    tensor_shapes: Callable[[], dict[str, tuple[int, ...]]] = field(default=lambda: {})
    # The header's labels, checked.
    labels: dict[str, str] = field(default_factory=dict)


def plan_upload(
    header: registry_pb2.UploadHeader, *, max_upload_bytes: int, max_example_chars: int
) -> UploadPlan:
    kind = kind_name(header.kind)
    check_name(header.name)
    files = list(header.files)
    if not files:
        raise InvalidArgument("an upload needs at least one file", param="files")
    if len(files) > MAX_FILES:
        raise InvalidArgument(f"too many files ({len(files)} > {MAX_FILES})", param="files")
    # Before a byte is stored: a layout no file system can hold would be a version that every
    # download fails on.
    check_file_layout(f.path for f in files)
    total = 0
    for f in files:
        if is_pickle(f.path):
            raise InvalidArgument(
                f"{f.path}: pickle files (.bin, .pt, .pkl, ...) can run code when loaded and are "
                "refused; save weights as .safetensors",
                param="files",
                code="pickle_refused",
            )
        if f.size_bytes < 0 or not SHA256_RE.fullmatch(f.sha256):
            raise InvalidArgument(
                f"{f.path}: every file needs its size and lower-case hex sha256", param="files"
            )
        total += f.size_bytes
    if total > max_upload_bytes:
        raise ResourceExhausted(
            f"upload is {total} bytes, over the limit of {max_upload_bytes} bytes",
            param="files",
            code="upload_too_large",
        )
    labels = check_labels(header.labels)
    if kind == "dataset":
        plan = _plan_dataset(header, files, max_example_chars)
    elif kind == "adapter":
        plan = _plan_adapter(header, files)
    elif kind == "evaluation":
        plan = _plan_evaluation(header, files)
    elif kind == "eval_definition":
        plan = _plan_eval_definition(header, files)
    else:
        plan = _plan_model(header, files)
    plan.labels = labels
    return plan


def _plan_dataset(header, files, max_example_chars: int) -> UploadPlan:
    if any(is_sqlite_name(f.path) for f in files):
        return _plan_sqlite(header, files)
    for f in files:
        if not f.path.endswith(".jsonl"):
            raise InvalidArgument(
                f"{shown(f.path)}: a dataset holds .jsonl files only, or one SQLite database "
                "(.db, .sqlite, .sqlite3)",
                param="files",
            )
    checks = {f.path: DatasetCheck(f.path, max_example_chars=max_example_chars) for f in files}

    def info() -> registry_pb2.DatasetInfo:
        formats = {c.format for c in checks.values()}
        if len(formats) > 1:
            raise InvalidArgument("all files of a dataset must share one format", param="files")
        return registry_pb2.DatasetInfo(
            format=formats.pop(), num_examples=sum(c.num_examples for c in checks.values())
        )

    return UploadPlan("dataset", header, dict(checks), info)


def _plan_sqlite(header, files) -> UploadPlan:
    # One database per version: a grader names it by ref, and which file of several it meant
    # would be a guess.
    if len(files) != 1:
        raise InvalidArgument(
            "a SQLite dataset is exactly one database file; upload the .jsonl files (or the "
            "other databases) as datasets of their own",
            param="files",
        )
    entry = files[0]
    check = SqliteCheck(entry.path, entry.size_bytes)

    def info() -> registry_pb2.DatasetInfo:
        return registry_pb2.DatasetInfo(format=registry_pb2.DATASET_FORMAT_SQLITE, num_examples=0)

    return UploadPlan("dataset", header, {entry.path: check}, info)


def _plan_eval_definition(header, files) -> UploadPlan:
    if [f.path for f in files] != [DEFINITION_FILE]:
        raise InvalidArgument(f"an eval definition is exactly one {DEFINITION_FILE}", param="files")
    definition = JsonCapture(DEFINITION_FILE)

    def info() -> registry_pb2.EvalDefinitionInfo:
        broken = check_definition(definition.value)
        if broken is not None:
            raise InvalidArgument(
                f"{DEFINITION_FILE}: {broken}", param="files", code="eval_definition_invalid"
            )
        name = definition.value["name"]
        # The version's display name: a NUL would be a string PostgreSQL's JSON refuses, in
        # the info every evaluations query reads; any control character garbles listings.
        control = CONTROL.search(name)
        if control:
            raise InvalidArgument(
                f"{DEFINITION_FILE}: 'name' holds the control character "
                f"U+{ord(control.group()):04X}: remove it",
                param="files",
                code="eval_definition_invalid",
            )
        return registry_pb2.EvalDefinitionInfo(
            display_name=name[:256],
            num_criteria=len(definition.value["testing_criteria"]),
        )

    return UploadPlan("eval_definition", header, {DEFINITION_FILE: definition}, info)


def _plan_evaluation(header, files) -> UploadPlan:
    paths = {f.path for f in files}
    expected = {SUMMARY_FILE, RESULTS_FILE}
    if paths != expected:
        extra = sorted(paths - expected)
        raise InvalidArgument(
            f"an evaluation is exactly {SUMMARY_FILE} and {RESULTS_FILE}"
            + (f"; not {', '.join(shown(p, 60) for p in extra[:3])}" if extra else ""),
            param="files",
        )
    summary_json = JsonCapture(SUMMARY_FILE)
    results = ResultsCheck(RESULTS_FILE)
    parsed: list[EvalSummary] = []

    def info() -> registry_pb2.EvaluationInfo:
        summary = parse_summary(summary_json.value)
        parsed.append(summary)
        return evaluation_info(summary, results.num_items)

    checks: dict[str, Check] = {SUMMARY_FILE: summary_json, RESULTS_FILE: results}
    return UploadPlan(
        "evaluation", header, checks, info, summary=lambda: parsed[-1] if parsed else None
    )


def _plan_adapter(header, files) -> UploadPlan:
    paths = {f.path: f for f in files}
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if required not in paths:
            raise InvalidArgument(
                f"not a PEFT adapter folder: {required} is missing", param="files"
            )
    config = JsonCapture(ADAPTER_CONFIG)
    weights = SafetensorsCheck(
        ADAPTER_WEIGHTS, paths[ADAPTER_WEIGHTS].size_bytes, check_finite=True
    )
    checks: dict[str, Check] = {p: _default_check(p, f.size_bytes) for p, f in paths.items()}
    checks[ADAPTER_CONFIG], checks[ADAPTER_WEIGHTS] = config, weights

    def info() -> registry_pb2.AdapterInfo:
        adapter = adapter_info(config.value)
        check_weights_type(ADAPTER_WEIGHTS, adapter.peft_type, weights.tensor_names)
        if adapter.peft_type == "LORA" and not any("lora_" in n for n in weights.tensor_names):
            raise InvalidArgument(
                f"{ADAPTER_WEIGHTS} holds no LoRA tensors (lora_A/lora_B)", param="files"
            )
        return adapter

    def base_model_hint() -> str:
        return header.base_model or str(config.value.get("base_model_name_or_path") or "")

    return UploadPlan(
        "adapter",
        header,
        checks,
        info,
        base_model_hint,
        tensor_shapes=lambda: weights.tensor_shapes,
    )


def adapter_info(cfg: dict) -> registry_pb2.AdapterInfo:
    """Parse the facts the gateway and trainer rely on from an adapter_config.json."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"{ADAPTER_CONFIG}: {why}", param="files")

    peft_type = cfg.get("peft_type")
    if peft_type not in ACCEPTED:
        raise bad(
            f"peft_type is {shown(peft_type, 40)}; the registry takes {', '.join(ACCEPTED)} "
            "adapters (LoRA includes DoRA)"
        )
    if peft_type != "LORA":
        return merged_adapter_info(cfg, peft_type, bad)
    rank, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise bad(f"'r' must be a positive integer, got {shown(rank, 40)}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise bad(f"'lora_alpha' must be a positive number, got {shown(alpha, 40)}")
    targets = parse_targets(cfg, bad)
    to_save = parse_modules_to_save(cfg, bad)
    flags: dict[str, bool] = {}
    for key in ("use_dora", "use_rslora"):
        value = cfg.get(key) or False
        if not isinstance(value, bool):
            raise bad(f"'{key}' must be true or false")
        flags[key] = value
    return registry_pb2.AdapterInfo(
        peft_type=peft_type,
        rank=rank,
        alpha=float(alpha),
        target_modules=sorted(targets),
        modules_to_save=to_save,
        task_type=str(cfg.get("task_type") or ""),
        use_dora=flags["use_dora"],
        use_rslora=flags["use_rslora"],
    )


def _plan_model(header, files) -> UploadPlan:
    paths = {f.path: f for f in files}
    if "config.json" not in paths:
        raise InvalidArgument(
            "not a Hugging Face model folder: config.json is missing", param="files"
        )
    if not any(p.endswith(".safetensors") for p in paths):
        raise InvalidArgument("a model needs its weights as .safetensors files", param="files")
    config = JsonCapture("config.json")
    checks: dict[str, Check] = {p: _default_check(p, f.size_bytes) for p, f in paths.items()}
    checks["config.json"] = config

    def info() -> registry_pb2.ModelInfo:
        arch = config.value.get("architectures") or [""]
        dtype = config.value.get("torch_dtype") or config.value.get("dtype") or ""
        return registry_pb2.ModelInfo(
            architecture=str(arch[0]), source=header.source, dtype=str(dtype)
        )

    return UploadPlan("model", header, checks, info)


def _default_check(path: str, size: int) -> Check:
    # Model weights get their header and offsets checked; scanning every value of a multi-GB
    # model for NaN would cost more than it catches (exports are checked by the exporter).
    if PurePosixPath(path).suffix == ".safetensors":
        return SafetensorsCheck(path, size, check_finite=False)
    return NoCheck()
