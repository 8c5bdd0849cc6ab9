"""The training spec, typed and validated up front.

``training_config_from_proto`` turns a wire ``TrainingSpec`` into a frozen ``TrainingConfig``
with every default applied, or refuses it with an error whose message says what to change and
whose ``param`` names the field. The recipes, the memory estimate and the runners read only
``TrainingConfig`` (its JSON form travels to the worker), never the proto.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.stubs import trainer_pb2
from services.trainer.device import DeviceInfo

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9\-_.]{0,62}$")
# `name`, `name@3` or `name@alias`, as the registry resolves them.
REF_RE = re.compile(r"^[a-z0-9][a-z0-9\-_.]{0,62}(@[a-z0-9][a-z0-9\-_.]{0,62})?$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

Method = Literal["lora", "qlora", "dora", "full", "continued_pretraining"]
Precision = Literal["fp32", "bf16", "fp16"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]

METHODS: dict[int, Method] = {
    trainer_pb2.METHOD_LORA: "lora",
    trainer_pb2.METHOD_QLORA: "qlora",
    trainer_pb2.METHOD_DORA: "dora",
    trainer_pb2.METHOD_FULL: "full",
    trainer_pb2.METHOD_CONTINUED_PRETRAINING: "continued_pretraining",
}
PRECISIONS: dict[int, Precision] = {
    trainer_pb2.PRECISION_FP32: "fp32",
    trainer_pb2.PRECISION_BF16: "bf16",
    trainer_pb2.PRECISION_FP16: "fp16",
}
SCHEDULERS: dict[int, Scheduler] = {
    trainer_pb2.LR_SCHEDULER_LINEAR: "linear",
    trainer_pb2.LR_SCHEDULER_COSINE: "cosine",
    trainer_pb2.LR_SCHEDULER_CONSTANT: "constant",
    trainer_pb2.LR_SCHEDULER_CONSTANT_WITH_WARMUP: "constant_with_warmup",
}
ADAPTER_METHODS = ("lora", "qlora", "dora", "continued_pretraining")

P = "training."
H = "training.hyperparameters."
L = "training.lora."


class TrainingConfig(BaseModel):
    """Every knob of a training job, defaults applied. Frozen: what was validated is what runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_model: str
    dataset: str
    validation_dataset: str = ""
    output_name: str
    method: Method = "lora"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)
    use_rslora: bool = False
    loraplus_lr_ratio: float = 0.0
    epochs: float = 3.0
    max_steps: int = 0
    learning_rate: float = 2e-4
    lr_scheduler: Scheduler = "linear"
    warmup_ratio: float = 0.03
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 1024
    packing: bool = False
    neftune_noise_alpha: float = 0.0
    gradient_checkpointing: bool = False
    precision: Precision = "fp32"
    seed: int = 42
    eval_steps: int = 0
    save_steps: int = 50
    early_stopping_patience: int = 0
    train_on_prompt: bool = False
    weight_decay: float = 0.0
    num_gpus: int = 0
    zero_stage: int = 0

    @property
    def is_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS

    @property
    def output_kind(self) -> str:
        """Registry kind of what the job publishes."""
        return "adapter" if self.is_adapter else "model"


def _require(ok: bool, message: str, param: str, error=InvalidArgument) -> None:
    if not ok:
        raise error(message, param=param, code="invalid_spec")


def _name(value: str, param: str, what: str, *, ref: bool) -> str:
    _require(bool(value), f"{what} is required", param)
    pattern = REF_RE if ref else NAME_RE
    shape = "`name`, `name@version` or `name@alias`" if ref else "a name"
    _require(
        bool(pattern.match(value)),
        f"{what} {value!r} is not {shape}: use lowercase letters, digits, '-', '_' and '.', "
        "starting with a letter or digit, at most 63 characters",
        param,
    )
    return value


def training_config_from_proto(
    spec: trainer_pb2.TrainingSpec, device: DeviceInfo
) -> TrainingConfig:
    """Validate ``spec`` for ``device`` and apply the defaults."""
    lora, hp = spec.lora, spec.hyperparameters
    method = METHODS.get(spec.method, "lora") if spec.method else "lora"
    _require(
        spec.method in METHODS or spec.method == trainer_pb2.METHOD_UNSPECIFIED,
        f"unknown method {spec.method}; use one of {', '.join(METHODS.values())}",
        P + "method",
    )
    if method == "qlora":
        _require(
            device.cuda,
            "method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); use method lora on CPU",
            P + "method",
            FailedPrecondition,
        )
    if spec.num_gpus > 0:
        _require(
            device.cuda,
            f"num_gpus={spec.num_gpus} but this trainer has no CUDA GPU; set num_gpus to 0 to "
            "train on the CPU",
            P + "num_gpus",
            FailedPrecondition,
        )
        _require(
            spec.num_gpus <= device.gpu_count,
            f"num_gpus={spec.num_gpus} but the device has {device.gpu_count}; lower num_gpus",
            P + "num_gpus",
            FailedPrecondition,
        )
    _require(spec.num_gpus >= 0, "num_gpus must be >= 0", P + "num_gpus")
    _require(
        spec.zero_stage in (0, 2, 3), "zero_stage must be 2 or 3 (0 picks 2)", P + "zero_stage"
    )
    _require(
        spec.zero_stage == 0 or spec.num_gpus > 1,
        "zero_stage applies to multi-GPU runs only; set num_gpus > 1 or zero_stage 0",
        P + "zero_stage",
    )
    _require(
        not (method == "qlora" and spec.zero_stage == 3),
        "qlora with ZeRO-3 is not supported here; use zero_stage 2",
        P + "zero_stage",
    )

    adapter = method in ADAPTER_METHODS
    has_lora = (
        lora.r
        or lora.alpha
        or lora.HasField("dropout")
        or lora.target_modules
        or lora.use_rslora
        or lora.loraplus_lr_ratio
    )
    _require(
        adapter or not has_lora,
        "lora settings apply to adapter methods only; drop them for method full",
        P + "lora",
    )
    r = lora.r or 16
    _require(1 <= r <= 1024, f"lora.r={lora.r} is out of range; use 1..1024 (e.g. 16)", L + "r")
    _require(lora.alpha >= 0, "lora.alpha must be > 0 (0 means 2 * r)", L + "alpha")
    dropout = lora.dropout if lora.HasField("dropout") else 0.05
    _require(0 <= dropout < 1, f"lora.dropout={dropout} must be in [0, 1)", L + "dropout")
    targets = tuple(lora.target_modules) or ("all-linear",)
    for name in targets:
        _require(
            name == "all-linear" or bool(MODULE_RE.match(name)),
            f"target module {name!r} is not a module name; use names such as q_proj, v_proj "
            "or all-linear",
            L + "target_modules",
        )
    _require(
        lora.loraplus_lr_ratio == 0 or lora.loraplus_lr_ratio >= 1,
        f"lora.loraplus_lr_ratio={lora.loraplus_lr_ratio}; use 0 (off) or >= 1 (e.g. 16)",
        L + "loraplus_lr_ratio",
    )

    epochs = hp.epochs or 3.0
    _require(0 < epochs <= 100, f"epochs={hp.epochs} must be in (0, 100]", H + "epochs")
    _require(hp.max_steps >= 0, "max_steps must be >= 0 (0: use epochs)", H + "max_steps")
    lr = hp.learning_rate or (2e-4 if adapter else 2e-5)
    _require(
        0 < lr <= 1, f"learning_rate={hp.learning_rate} must be in (0, 1]", H + "learning_rate"
    )
    warmup = hp.warmup_ratio if hp.HasField("warmup_ratio") else 0.03
    _require(0 <= warmup < 1, f"warmup_ratio={warmup} must be in [0, 1)", H + "warmup_ratio")
    batch = hp.batch_size or 8
    _require(1 <= batch <= 65536, f"batch_size={hp.batch_size} must be >= 1", H + "batch_size")
    accum = hp.gradient_accumulation_steps or 1
    _require(
        1 <= accum <= 4096,
        "gradient_accumulation_steps must be >= 1",
        H + "gradient_accumulation_steps",
    )
    seq = hp.max_seq_length or 1024
    _require(
        16 <= seq <= 1_048_576,
        f"max_seq_length={hp.max_seq_length} must be in 16..1048576",
        H + "max_seq_length",
    )
    _require(
        hp.neftune_noise_alpha >= 0,
        "neftune_noise_alpha must be >= 0 (0: off)",
        H + "neftune_noise_alpha",
    )
    _require(hp.weight_decay >= 0, "weight_decay must be >= 0", H + "weight_decay")
    _require(hp.eval_steps >= 0, "eval_steps must be >= 0", H + "eval_steps")
    _require(hp.save_steps >= 0, "save_steps must be >= 0 (0: default 50)", H + "save_steps")
    _require(
        hp.early_stopping_patience >= 0,
        "early_stopping_patience must be >= 0",
        H + "early_stopping_patience",
    )
    seed = hp.seed if hp.HasField("seed") else 42
    _require(0 <= seed < 2**32, "seed must be in [0, 2^32)", H + "seed")

    validation = spec.validation_dataset
    if validation:
        _name(validation, P + "validation_dataset", "validation_dataset", ref=True)
    _require(
        bool(validation) or (hp.eval_steps == 0 and hp.early_stopping_patience == 0),
        "eval_steps and early_stopping_patience need a validation_dataset; set one or drop them",
        P + "validation_dataset",
    )
    _require(
        not (method == "continued_pretraining" and hp.train_on_prompt),
        "train_on_prompt has no meaning for continued_pretraining (every token is trained on); "
        "drop it",
        H + "train_on_prompt",
    )

    precision = _precision(hp.precision, device)
    return TrainingConfig(
        base_model=_name(spec.base_model, P + "base_model", "base_model", ref=True),
        dataset=_name(spec.dataset, P + "dataset", "dataset", ref=True),
        validation_dataset=validation,
        output_name=_name(spec.output_name, P + "output_name", "output_name", ref=False),
        method=method,
        lora_r=r,
        lora_alpha=lora.alpha or 2.0 * r,
        lora_dropout=dropout,
        target_modules=targets,
        use_rslora=lora.use_rslora,
        loraplus_lr_ratio=lora.loraplus_lr_ratio,
        epochs=epochs,
        max_steps=hp.max_steps,
        learning_rate=lr,
        lr_scheduler=SCHEDULERS.get(hp.lr_scheduler, "linear"),
        warmup_ratio=warmup,
        batch_size=batch,
        gradient_accumulation_steps=accum,
        max_seq_length=seq,
        packing=hp.packing,
        neftune_noise_alpha=hp.neftune_noise_alpha,
        gradient_checkpointing=hp.gradient_checkpointing,
        precision=precision,
        seed=seed,
        eval_steps=hp.eval_steps,
        save_steps=hp.save_steps or 50,
        early_stopping_patience=hp.early_stopping_patience,
        train_on_prompt=hp.train_on_prompt,
        weight_decay=hp.weight_decay,
        num_gpus=spec.num_gpus,
        zero_stage=(spec.zero_stage or 2) if spec.num_gpus > 1 else 0,
    )


def _precision(value: int, device: DeviceInfo) -> Precision:
    if value == trainer_pb2.PRECISION_UNSPECIFIED:
        return "bf16" if device.cuda else "fp32"
    _require(
        value in PRECISIONS, f"unknown precision {value}; use fp32, bf16 or fp16", H + "precision"
    )
    precision = PRECISIONS[value]
    if not device.cuda:
        _require(
            precision != "fp16",
            "fp16 mixed precision needs a CUDA GPU; use precision fp32 on CPU",
            H + "precision",
            FailedPrecondition,
        )
        _require(
            precision != "bf16" or device.cpu_bf16,
            "bf16 on this CPU (no AVX512-BF16/AMX) runs ~3x slower than fp32 and gains no "
            "memory worth having at this size; use precision fp32 on CPU",
            H + "precision",
            FailedPrecondition,
        )
    return precision


def training_config_to_proto(config: TrainingConfig) -> trainer_pb2.TrainingSpec:
    """The spec with its defaults filled in, as stored and shown back to users."""
    by_name = {v: k for k, v in METHODS.items()}
    return trainer_pb2.TrainingSpec(
        base_model=config.base_model,
        dataset=config.dataset,
        validation_dataset=config.validation_dataset,
        method=by_name[config.method],
        lora=trainer_pb2.LoraConfig(
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            use_rslora=config.use_rslora,
            loraplus_lr_ratio=config.loraplus_lr_ratio,
        )
        if config.is_adapter
        else None,
        hyperparameters=trainer_pb2.Hyperparameters(
            epochs=config.epochs,
            max_steps=config.max_steps,
            learning_rate=config.learning_rate,
            lr_scheduler={v: k for k, v in SCHEDULERS.items()}[config.lr_scheduler],
            warmup_ratio=config.warmup_ratio,
            batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            max_seq_length=config.max_seq_length,
            packing=config.packing,
            neftune_noise_alpha=config.neftune_noise_alpha,
            gradient_checkpointing=config.gradient_checkpointing,
            precision={v: k for k, v in PRECISIONS.items()}[config.precision],
            seed=config.seed,
            eval_steps=config.eval_steps,
            save_steps=config.save_steps,
            early_stopping_patience=config.early_stopping_patience,
            train_on_prompt=config.train_on_prompt,
            weight_decay=config.weight_decay,
        ),
        output_name=config.output_name,
        num_gpus=config.num_gpus,
        zero_stage=config.zero_stage,
    )
