"""The export spec (adapter version -> merged model version), typed and validated up front, and
the one decision an export has to get right: in which precision to load the base model.

``export_config_from_proto`` turns a wire ``ExportSpec`` into a frozen ``ExportConfig`` or
refuses it with the field at fault; admission then pins ``adapter`` and ``base_model`` to the
exact versions (``name@version``) so every retry merges the same bytes. The worker and the
recipe read only ``ExportConfig`` (its JSON form travels to the worker), never the proto.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.refs import check_name, parse_ref
from services.common.stubs import trainer_pb2
from services.trainer.spec import PRECISIONS, Precision

E = "export."


class ExportConfig(BaseModel):
    """Every knob of an export job. Frozen: what was validated is what runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Tells a stored export config from a training one (``job_config_from_json``).
    kind: Literal["export"] = "export"
    adapter: str
    output_name: str
    precision: Precision = "bf16"
    ollama_modelfile: bool = False
    # Filled in by admission: the adapter's base model, pinned to `name@version`.
    base_model: str = ""
    # Safetensors shard size of the merged weights (save_pretrained's max_shard_size).
    max_shard_size: str = "2GB"

    @property
    def output_kind(self) -> str:
        return "model"

    # The supervisor and the runners ask every job for these: an export merges on the CPU
    # (see ``services.trainer.recipes.export``) and never holds a GPU.
    @property
    def num_gpus(self) -> int:
        return 0

    @property
    def zero_stage(self) -> int:
        return 0


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise InvalidArgument(message, param=param, code="invalid_spec")


def export_config_from_proto(spec: trainer_pb2.ExportSpec) -> ExportConfig:
    """Validate ``spec`` and apply the defaults (bf16 weights, no Modelfile)."""
    _check(bool(spec.adapter), "export.adapter is required, e.g. `sql-lora@3`", E + "adapter")
    _check(bool(spec.output_name), "export.output_name is required", E + "output_name")
    try:
        parse_ref(spec.adapter, param=E + "adapter")
        check_name(spec.output_name, "output_name", param=E + "output_name")
    except InvalidArgument as exc:
        raise InvalidArgument(exc.message, param=exc.param, code="invalid_spec") from None
    precision: Precision = "bf16"
    if spec.precision != trainer_pb2.PRECISION_UNSPECIFIED:
        _check(
            spec.precision in PRECISIONS,
            f"unknown precision {spec.precision}; use bf16, fp16 or fp32",
            E + "precision",
        )
        precision = PRECISIONS[spec.precision]
    return ExportConfig(
        adapter=spec.adapter,
        output_name=spec.output_name,
        precision=precision,
        ollama_modelfile=spec.ollama_modelfile,
    )


def export_config_to_proto(config: ExportConfig) -> trainer_pb2.ExportSpec:
    """The spec with the pinned adapter and the defaults filled in, as stored and shown."""
    return trainer_pb2.ExportSpec(
        adapter=config.adapter,
        output_name=config.output_name,
        precision={v: k for k, v in PRECISIONS.items()}[config.precision],
        ollama_modelfile=config.ollama_modelfile,
    )


@dataclass(frozen=True)
class LoadPlan:
    """How the base model is loaded for the merge, and why."""

    dtype: Precision
    reason: str


def merge_load_plan(training: dict | None) -> LoadPlan:
    """The precision to load the base in, from the adapter's training hyper-parameters (its
    ``training_report.json`` or the lineage the trainer published; None when unknown).

    - Unknown (an adapter pushed by hand): fp32. Merging in fp32 loses nothing, whatever the
      adapter was trained in; the output dtype is chosen separately.
    - LoRA/DoRA trained in bf16/fp16/fp32: that precision, so the merged weights are
      ``W + BA`` computed on the very base weights the adapter was trained against.
    - QLoRA: the base is loaded *unquantized* in bf16 (QLoRA's compute dtype) and the adapter
      merged into it. Merging into the 4-bit weights would either be refused by PEFT or
      re-quantize ``W + BA`` and destroy the update (NF4 steps are far coarser than a LoRA
      delta); re-creating the NF4-rounded base would need CUDA bitsandbytes and bake the
      quantization error into a full-precision model. The price: the merged model differs from
      base-in-4-bit + adapter by the base's NF4 rounding, as with every QLoRA merge.
    - Full fine-tuning or continued pretraining that produced a model has nothing to merge.
    """
    if not training:
        return LoadPlan("fp32", "no training report: merging in fp32 loses nothing")
    method = training.get("method", "lora")
    precision = training.get("precision", "fp32")
    if method == "full":
        raise FailedPrecondition(
            "a full fine-tune is a model already, with nothing to merge; pull or serve it as is",
            param=E + "adapter",
            code="nothing_to_merge",
        )
    if method == "qlora":
        return LoadPlan(
            "bf16" if precision != "fp32" else "fp32",
            "qlora: merged into the unquantized base, never into 4-bit weights",
        )
    if precision not in ("fp32", "bf16", "fp16"):
        raise FailedPrecondition(
            f"the adapter was trained in precision {precision!r}, which export cannot load the "
            "base in; re-train in fp32, bf16 or fp16",
            param=E + "adapter",
            code="unsupported_adapter",
        )
    return LoadPlan(precision, f"{method} trained in {precision}: merged in the same precision")


def job_config_from_json(raw: str):
    """The stored config of a job: an ``ExportConfig``, an ``EvalConfig`` or a
    ``TrainingConfig``."""
    import json

    from services.trainer.eval_spec import EvalConfig
    from services.trainer.spec import TrainingConfig

    kind = json.loads(raw).get("kind")
    if kind == "export":
        return ExportConfig.model_validate_json(raw)
    if kind == "evaluation":
        return EvalConfig.model_validate_json(raw)
    return TrainingConfig.model_validate_json(raw)
