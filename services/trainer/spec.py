"""The training spec, validated for this trainer's device.

``training_config_from_proto`` turns a wire ``TrainingSpec`` into a frozen ``TrainingConfig``
with every default applied, or refuses it with an error whose message says what to change and
whose ``param`` names the field. The settings themselves (defaults, bounds, help, the proto
mapping) are declared once in ``services/common/training_spec.py``; what is added here is what
depends on the device: how many GPUs an unset ``num_gpus`` means (all of them; an explicit 0
is the CPU), methods and precisions that need CUDA on the device the job trains on; and
the full check of the end-of-run evaluation's graders, whose types the evaluation room owns.
The recipes, the memory estimate and the runners read only ``TrainingConfig`` (its JSON form
travels to the worker), never the proto.
"""

from __future__ import annotations

from services.common.errors import FailedPrecondition
from services.common.stubs import trainer_pb2
from services.common.training_spec import (
    ADAPTER_METHODS,
    METHODS,
    PRECISIONS,
    SCHEDULERS,
    Method,
    Precision,
    Scheduler,
    TrainingConfig,
    TrainingEvalConfig,
    ia3_feedforward_modules,
    param_of,
)
from services.common.training_spec_proto import (
    config_from_values,
    config_to_proto,
    values_from_proto,
)
from services.trainer.device import DeviceInfo
from services.trainer.eval_spec import graders_from_proto

__all__ = [
    "ADAPTER_METHODS",
    "METHODS",
    "PRECISIONS",
    "SCHEDULERS",
    "Method",
    "Precision",
    "Scheduler",
    "TrainingConfig",
    "TrainingEvalConfig",
    "ia3_feedforward_modules",
    "training_config_from_proto",
    "training_config_to_proto",
]


def _require_device(ok: bool, message: str, name: str) -> None:
    if not ok:
        raise FailedPrecondition(message, param=param_of(name), code="invalid_spec")


def training_config_from_proto(
    spec: trainer_pb2.TrainingSpec, device: DeviceInfo
) -> TrainingConfig:
    """Validate ``spec`` for ``device`` and apply the defaults."""
    values = values_from_proto(spec)
    # Unset: every GPU the trainer has; an explicit 0 trains on the CPU even where there are
    # GPUs, so every rule below asks about the device the job trains on, not the machine.
    gpus = values.setdefault("num_gpus", _default_gpus(device))
    if gpus > 0:
        _require_device(
            device.cuda,
            f"num_gpus={gpus} but this trainer has no CUDA GPU; set num_gpus to 0 to train on "
            "the CPU",
            "num_gpus",
        )
        _require_device(
            gpus <= device.gpu_count,
            f"num_gpus={gpus} but the device has {device.gpu_count}; lower num_gpus",
            "num_gpus",
        )
    on_cuda = gpus > 0
    if values.get("method") == "qlora":
        _require_device(
            on_cuda,
            "method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); use method lora on CPU"
            if not device.cuda
            else "method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels) but num_gpus=0 "
            "trains on the CPU; leave num_gpus unset or set it to 1 or more",
            "method",
        )
    values["precision"] = _precision(values.get("precision"), on_cuda, device.cpu_bf16)
    config = config_from_values(values)
    if config.evaluation is None:
        return config
    # Normalised as an eval job's are (same defaults, whole numbers), so the evaluation this
    # job publishes carries the graders digest a promotion compares.
    graders = graders_from_proto(spec.evaluation.graders, param=param_of("evaluation.graders"))
    evaluation = config.evaluation.model_copy(update={"graders": tuple(graders)})
    return config.model_copy(update={"evaluation": evaluation})


def _default_gpus(device: DeviceInfo) -> int:
    """What an unset num_gpus means on ``device``: all its GPUs, or the CPU (0)."""
    return device.gpu_count if device.cuda else 0


def _precision(value: Precision | None, on_cuda: bool, cpu_bf16: bool) -> Precision:
    if value is None:
        # bf16 where the hardware runs it natively (CUDA, or a CPU with AMX / AVX512-BF16: ~1.4x
        # faster than fp32 there); on plain AVX2 it is emulated and ~3x slower, so fp32.
        return "bf16" if on_cuda or cpu_bf16 else "fp32"
    if not on_cuda:
        _require_device(
            value != "fp16",
            "fp16 mixed precision needs a CUDA GPU; use precision fp32 on CPU",
            "precision",
        )
        _require_device(
            value != "bf16" or cpu_bf16,
            "bf16 on this CPU (no AVX512-BF16/AMX) runs ~3x slower than fp32 and gains no "
            "memory worth having at this size; use precision fp32 on CPU",
            "precision",
        )
    return value


def training_config_to_proto(config: TrainingConfig) -> trainer_pb2.TrainingSpec:
    """The spec with its defaults filled in, as stored and shown back to users."""
    return config_to_proto(config)
