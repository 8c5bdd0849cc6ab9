"""The training spec, declared once.

Every setting of a training job is one field of ``TrainingConfig``: its default, its bounds, its
help text and the section of ``tuneplex.trainer.v1.TrainingSpec`` it travels in (``training.*``,
``training.lora.*``, ``training.hyperparameters.*``). The end-of-run evaluation is one nested
field, ``evaluation``, whose own settings (``TrainingEvalConfig``) are declared the same way and
travel in ``training.evaluation.*``; ``SETTINGS`` lists every leaf setting, nested ones by their
dotted name (``evaluation.eval_set``). The rest is derived from that declaration:
reading and writing the proto (``training_spec_proto.py``: by field name; ``PROTO_NAMES`` and
``ENUMS`` hold the only exceptions), the validation messages (``training_spec_text.py``, from
the bounds), the ``tuneplex jobs create`` flags and docs/training-spec.md
(``scripts/gen_spec_docs.py``).

It lives in ``common`` because both sides read it: the trainer validates with it and the CLI
builds its flags from it. Rules that depend on the device (qlora needs CUDA, ...) stay with the
trainer (``services/trainer/spec.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from services.common.errors import InvalidArgument
from services.common.refs import LATEST, check_name, is_version_number, parse_ref
from services.common.stubs import trainer_pb2

MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

Method = Literal[
    "lora", "qlora", "dora", "full", "continued_pretraining", "dpo", "ia3", "loha", "lokr"
]
Precision = Literal["fp32", "bf16", "fp16"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]

METHODS: dict[trainer_pb2.Method, Method] = {
    trainer_pb2.METHOD_LORA: "lora",
    trainer_pb2.METHOD_QLORA: "qlora",
    trainer_pb2.METHOD_DORA: "dora",
    trainer_pb2.METHOD_FULL: "full",
    trainer_pb2.METHOD_CONTINUED_PRETRAINING: "continued_pretraining",
    trainer_pb2.METHOD_DPO: "dpo",
    trainer_pb2.METHOD_IA3: "ia3",
    trainer_pb2.METHOD_LOHA: "loha",
    trainer_pb2.METHOD_LOKR: "lokr",
}
PRECISIONS: dict[trainer_pb2.Precision, Precision] = {
    trainer_pb2.PRECISION_FP32: "fp32",
    trainer_pb2.PRECISION_BF16: "bf16",
    trainer_pb2.PRECISION_FP16: "fp16",
}
SCHEDULERS: dict[trainer_pb2.LrScheduler, Scheduler] = {
    trainer_pb2.LR_SCHEDULER_LINEAR: "linear",
    trainer_pb2.LR_SCHEDULER_COSINE: "cosine",
    trainer_pb2.LR_SCHEDULER_CONSTANT: "constant",
    trainer_pb2.LR_SCHEDULER_CONSTANT_WITH_WARMUP: "constant_with_warmup",
}
# PEFT adapter types beside LoRA, trained by the SFT recipe and served through a merge
# (services/common/peft_types.py): IA3 scales activations by learned vectors, LoHa adds a
# Hadamard product of two low-rank products, LoKr a Kronecker product.
PEFT_METHODS = ("ia3", "loha", "lokr")
ADAPTER_METHODS = ("lora", "qlora", "dora", "continued_pretraining", "dpo", *PEFT_METHODS)
# LoRA-section settings a method does not read, refused when set (``refuse_unused_settings``):
# IA3 has no rank, scale or dropout (one vector per module, initialised to ones); rsLoRA's
# scaling and LoRA+'s learning rate for B over A are defined on LoRA's A and B matrices only.
UNUSED_SETTINGS: dict[str, tuple[str, ...]] = {
    "ia3": ("lora_r", "lora_alpha", "lora_dropout", "use_rslora", "loraplus_lr_ratio"),
    "loha": ("use_rslora", "loraplus_lr_ratio"),
    "lokr": ("use_rslora", "loraplus_lr_ratio"),
}
# The MLP's linear modules of Llama-style models: IA3 scales their inputs (PEFT's
# ``feedforward_modules``), every other module's outputs.
FEEDFORWARD_MODULES = ("gate_proj", "up_proj", "down_proj")
# PEFT's own IA3 targets for Llama-style models (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING).
IA3_TARGET_MODULES = ("k_proj", "v_proj", "down_proj")
# Methods trained on preference pairs (a PREFERENCE dataset), every other one on chats or text.
PREFERENCE_METHODS = ("dpo",)
MAX_DPO_BETA = 10.0

# The only places where the wire and the config differ: enum numbers and the `lora_` prefix
# that keeps the flat config readable.
# Keyed by each field's own proto enum type; a value read off the wire is a plain int.
ENUMS: dict[str, Mapping[Any, str]] = {
    "method": METHODS,
    "precision": PRECISIONS,
    "lr_scheduler": SCHEDULERS,
}
PROTO_NAMES = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}
# Declared section -> the path of its message inside TrainingSpec.
SECTIONS = {
    "training": "",
    "lora": "lora",
    "hyperparameters": "hyperparameters",
    "evaluation": "evaluation",
    "sampling": "evaluation.sampling",
}
REF = "`name`, `name@version` or `name@alias`"
MAX_NAME_LENGTH = 63  # of a registry name (refs.NAME_RE)
INT32_MAX = 2**31 - 1
# The sampling bounds of eval jobs (services/trainer/eval_spec.py), OpenAI's ranges.
MAX_TEMPERATURE = 2.0
MAX_EVAL_TOKENS = 32768


def setting(
    default: Any = PydanticUndefined,
    *,
    section: str,
    help: str,
    default_text: str | None = None,
    allowed: str | None = None,
    **bounds: Any,
) -> Any:
    """A ``TrainingConfig`` field: ``section`` of ``TrainingSpec`` it travels in, ``help`` for
    the CLI and the docs, ``default_text`` where the default depends on other settings,
    ``allowed`` where a validator, not the bounds, says what is allowed."""
    extra: dict[str, JsonValue] = {"section": section}
    if default_text:
        extra["default_text"] = default_text
    if allowed:
        extra["allowed"] = allowed
    return Field(default, description=help, json_schema_extra=extra, **bounds)


def _ref_rule(value: str) -> str:
    """The registry's own grammar (ASCII digits, bounded versions), so a ref the trainer
    accepts is one the registry can resolve. Only the message is kept: the error's location
    (pydantic's loc) names the field."""
    try:
        parse_ref(value)
    except InvalidArgument as exc:
        raise ValueError(exc.message) from None
    return value


class TrainingEvalConfig(BaseModel):
    """The evaluation at the end of a training job (``TrainingSpec.evaluation``): the published
    version is scored on an eval set by graders, optionally every checkpoint first (the best
    one is published) and the result promoted to an alias through the registry's gate."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    eval_set: str = setting(
        "",
        section="evaluation",
        help="Eval set in the registry (a dataset of format eval), e.g. `shop-sql-heldout`.",
        allowed=REF,
    )
    # Checked in full by the trainer (services.evaluation.graders.validate_graders), which
    # owns the grader types; here only their shape: JSON objects, at least one.
    graders: tuple[dict[str, Any], ...] = setting(
        (),
        section="evaluation",
        help="Grader objects (OpenAI-shaped JSON: string_check, regex, sql_execution, ...); "
        "the item score is their mean.",
        allowed="one or more grader objects",
    )
    max_tokens: int = setting(
        256, section="sampling", help="Tokens per answer.", ge=1, le=MAX_EVAL_TOKENS
    )
    temperature: float = setting(
        0.0, section="sampling", help="Sampling temperature; 0 is greedy.", ge=0, le=MAX_TEMPERATURE
    )
    top_p: float = setting(1.0, section="sampling", help="Nucleus sampling mass.", gt=0, le=1)
    seed: int = setting(42, section="sampling", help="Sampling seed.", ge=0, lt=2**32)
    each_checkpoint: bool = setting(
        False,
        section="evaluation",
        help="Also score every complete checkpoint (in the worker) and publish the best one "
        "(ties: the later step).",
    )
    promote_alias: str = setting(
        "",
        section="evaluation",
        help="After the evaluation, move this alias to the published version if the registry's "
        "gate lets it (a refusal keeps the version published, the alias where it was).",
        allowed="an alias name (not a number, not `latest`)",
    )
    promote_margin: float = setting(
        0.0,
        section="evaluation",
        help="How much higher than the alias's current version the score must be to move it.",
        ge=0,
        le=1,
    )
    # Not a setting (no section: never on the wire): admission pins each SQLite database a
    # grader names, as written -> `name@version`, so every attempt grades on the same bytes.
    databases: dict[str, str] = Field(default_factory=dict)

    @field_validator("eval_set")
    @classmethod
    def _eval_set_ref(cls, value: str) -> str:
        return _ref_rule(value) if value else value

    @field_validator("promote_alias")
    @classmethod
    def _alias_name(cls, value: str) -> str:
        if not value:
            return value
        # The registry's alias rule (services/registry/names.py::check_alias), which common
        # cannot import: a name, never a number (that would read as a version), not `latest`.
        try:
            check_name(value, "alias")
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        if is_version_number(value):
            raise ValueError(
                f"promote_alias {value!r} is a number, which reads as a version; use a name "
                "such as prod"
            )
        if value == LATEST:
            raise ValueError(
                "promote_alias `latest` is reserved (it always means the newest version); use "
                "a name such as prod"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainingEvalConfig:
        _require(
            bool(self.eval_set),
            "training.evaluation needs an eval_set (--eval-data): it is what the graders, "
            "each_checkpoint and promote_alias score on",
            "evaluation.eval_set",
        )
        _require(
            bool(self.graders),
            "training.evaluation needs at least one grader (--eval-grader FILE)",
            "evaluation.graders",
        )
        _require(
            self.promote_margin == 0 or bool(self.promote_alias),
            "promote_margin applies to a promotion; set promote_alias or drop it",
            "evaluation.promote_margin",
        )
        return self


class TrainingConfig(BaseModel):
    """Every knob of a training job, defaults applied. Frozen: what was validated is what runs.

    On the wire a zero value (0, "", false, empty list) means "unset: the default", except for
    the settings whose proto field has explicit presence (``optional``: dropout, warmup, seed,
    num_gpus), where 0 is a value."""

    # No inf or nan anywhere: every float is finite, and bounded by its field.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    base_model: str = setting(
        section="training",
        help="Base model in the registry, e.g. `smollm2-135m-instruct`.",
        allowed=REF,
    )
    dataset: str = setting(
        section="training", help="Dataset in the registry, e.g. `shop-sql@1`.", allowed=REF
    )
    validation_dataset: str = setting(
        "",
        section="training",
        help="Validation dataset in the registry (for eval_steps).",
        allowed=REF,
    )
    output_name: str = setting(
        section="training",
        help="Adapter name to publish to (a model name for method full).",
        allowed="a name: lowercase letters, digits, '-', '_', '.'",
    )
    method: Method = setting("lora", section="training", help="Fine-tuning method.")
    # 0 here is what a config built without a device gets; the trainer fills an unset
    # num_gpus in from its device (services/trainer/spec.py) before this model sees it.
    num_gpus: int = setting(
        0,
        section="training",
        help="GPUs to train on; more than one launches DeepSpeed ZeRO. 0 trains on the CPU.",
        default_text="all visible GPUs; 0 = CPU",
        ge=0,
        le=1024,
    )
    zero_stage: int = setting(
        0,
        section="training",
        help="ZeRO stage of a multi-GPU run: 2 or 3 (2 for ia3, loha and lokr).",
        default_text="2 with num_gpus > 1, else 0",
        allowed="0, 2, 3",
    )

    lora_r: int = setting(
        16, section="lora", help="LoRA rank (LoHa's and LoKr's too).", ge=1, le=1024
    )
    lora_alpha: float = setting(
        32.0,
        section="lora",
        help="LoRA scaling alpha (LoHa's and LoKr's too).",
        default_text="2 x lora_r",
        gt=0,
        le=16384,
    )
    lora_dropout: float = setting(
        0.05,
        section="lora",
        help="LoRA dropout; for loha and lokr the rank dropout of the weight update.",
        ge=0,
        lt=1,
    )
    target_modules: tuple[str, ...] = setting(
        ("all-linear",),
        section="lora",
        help="Module names to adapt, or all-linear.",
        default_text="all-linear; k_proj, v_proj, down_proj for method ia3",
        allowed="module names such as q_proj, v_proj",
    )
    use_rslora: bool = setting(
        False, section="lora", help="Scale by alpha / sqrt(r) instead of alpha / r."
    )
    loraplus_lr_ratio: float = setting(
        0.0,
        section="lora",
        help="LoRA+: learning-rate ratio of B over A, >= 1 (e.g. 16); 0 turns it off.",
        allowed="0 or [1, 1024]",
        ge=0,
        le=1024,
    )

    epochs: float = setting(3.0, section="hyperparameters", help="Epochs.", gt=0, le=100)
    max_steps: int = setting(
        0,
        section="hyperparameters",
        help="Stop after this many steps (overrides epochs); 0: use epochs.",
        ge=0,
        le=INT32_MAX,
    )
    learning_rate: float = setting(
        2e-4,
        section="hyperparameters",
        help="Peak learning rate.",
        default_text="2e-4 for adapters, 2e-5 for method full",
        gt=0,
        le=1,
    )
    lr_scheduler: Scheduler = setting(
        "linear", section="hyperparameters", help="Learning-rate schedule."
    )
    warmup_ratio: float = setting(
        0.03, section="hyperparameters", help="Fraction of steps spent warming up.", ge=0, lt=1
    )
    batch_size: int = setting(
        8, section="hyperparameters", help="Per-device batch size.", ge=1, le=65536
    )
    gradient_accumulation_steps: int = setting(
        1, section="hyperparameters", help="Batches per optimizer step.", ge=1, le=4096
    )
    max_seq_length: int = setting(
        512, section="hyperparameters", help="Tokens per example.", ge=16, le=1_048_576
    )
    packing: bool = setting(
        False, section="hyperparameters", help="Pack short examples into full sequences."
    )
    neftune_noise_alpha: float = setting(
        0.0, section="hyperparameters", help="NEFTune noise alpha; 0 turns it off.", ge=0, le=100
    )
    padding_free: bool = setting(
        True,
        section="hyperparameters",
        help="Batch examples end to end with no pad tokens (position ids restart per example, "
        "so attention stays within each); packing always batches this way.",
        default_text="true; false for method dpo (TRL's DPO trainer pads)",
    )
    gradient_checkpointing: bool = setting(
        False,
        section="hyperparameters",
        help="Recompute activations to save memory.",
        default_text="false; turned on when the job would not fit in memory without it",
    )
    precision: Precision = setting(
        "fp32",
        section="hyperparameters",
        help="Training precision.",
        default_text="bf16 on CUDA and on CPUs with AMX/AVX512-BF16, fp32 elsewhere",
    )
    seed: int = setting(42, section="hyperparameters", help="Random seed.", ge=0, lt=2**32)
    eval_steps: int = setting(
        0,
        section="hyperparameters",
        help="Evaluate every N steps (needs a validation_dataset); 0: once per epoch.",
        ge=0,
        le=INT32_MAX,
    )
    save_steps: int = setting(
        50, section="hyperparameters", help="Checkpoint every N steps.", ge=1, le=INT32_MAX
    )
    early_stopping_patience: int = setting(
        0,
        section="hyperparameters",
        help="Stop after N evaluations without improvement (needs a validation_dataset); 0: off.",
        ge=0,
        le=INT32_MAX,
    )
    train_on_prompt: bool = setting(
        False,
        section="hyperparameters",
        help="Compute the loss on prompt tokens too, not only on assistant tokens.",
    )
    # Decoupled weight decay scales weights by (1 - lr * weight_decay) each step: with lr <= 1,
    # weight_decay <= 1 keeps that factor from going negative.
    weight_decay: float = setting(
        0.0, section="hyperparameters", help="AdamW weight decay.", ge=0, le=1
    )
    dpo_beta: float = setting(
        0.1,
        section="hyperparameters",
        help="DPO: how strongly the adapter is held to the base model (the reference); higher "
        "stays closer. Method dpo only.",
        gt=0,
        le=MAX_DPO_BETA,
    )
    publish_checkpoints: bool = setting(
        False,
        section="training",
        help="Also publish each kept checkpoint's adapter, as `<output_name>-step-<N>`, when the "
        "job succeeds.",
    )
    evaluation: TrainingEvalConfig | None = setting(
        None,
        section="training",
        help="Score the result on an eval set at the end of the job (see Evaluation).",
    )

    @property
    def is_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS

    @property
    def is_preference(self) -> bool:
        """Trained on preference pairs (DATASET_FORMAT_PREFERENCE), not on chats or text."""
        return self.method in PREFERENCE_METHODS

    @property
    def output_kind(self) -> str:
        """Registry kind of what the job publishes."""
        return "adapter" if self.is_adapter else "model"

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, values: Any) -> Any:
        """Defaults that depend on other settings (see each field's ``default_text``)."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if not values.get("lora_alpha") and isinstance(values.get("lora_r"), int):
            values["lora_alpha"] = 2.0 * values["lora_r"]
        if not values.get("learning_rate"):
            full = values.get("method") not in (None, *ADAPTER_METHODS)
            values["learning_rate"] = 2e-5 if full else 2e-4
        if not values.get("zero_stage") and isinstance(values.get("num_gpus"), int):
            values["zero_stage"] = 2 if values["num_gpus"] > 1 else 0
        if values.get("method") == "ia3" and not values.get("target_modules"):
            values["target_modules"] = IA3_TARGET_MODULES
        if values.get("method") in PREFERENCE_METHODS and "padding_free" not in values:
            values["padding_free"] = False  # TRL's DPOTrainer pads (it has no padding-free path)
        return values

    @field_validator("evaluation", mode="before")
    @classmethod
    def _no_evaluation(cls, value: Any) -> Any:
        """On the wire an evaluation message with nothing set means none (as its empty
        eval_set says)."""
        if isinstance(value, dict) and not any(value.values()):
            return None
        return value

    @field_validator("base_model", "dataset", "validation_dataset", "output_name")
    @classmethod
    def _registry_name(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "validation_dataset" and not value:
            return value
        if info.field_name != "output_name":
            return _ref_rule(value)
        try:
            check_name(value, "output_name")
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name != "all-linear" and not MODULE_RE.match(name):
                raise ValueError(
                    f"target module {name!r} is not a module name; use names such as q_proj, "
                    "v_proj or all-linear"
                )
        return value or ("all-linear",)

    @field_validator("loraplus_lr_ratio")
    @classmethod
    def _loraplus_ratio(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError(f"lora.loraplus_lr_ratio={value}; use 0 (off) or >= 1 (e.g. 16)")
        return value

    @field_validator("zero_stage")
    @classmethod
    def _zero_stage(cls, value: int) -> int:
        if value not in (0, 2, 3):
            raise ValueError("zero_stage must be 2 or 3 (0 picks 2)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        """Rules between settings; each names the setting to change."""
        _require(
            self.zero_stage == 0 or self.num_gpus > 1,
            "zero_stage applies to multi-GPU runs only; set num_gpus > 1 or zero_stage 0",
            "zero_stage",
        )
        _require(
            not (self.method == "qlora" and self.zero_stage == 3),
            "qlora with ZeRO-3 is not supported here; use zero_stage 2",
            "zero_stage",
        )
        _require(
            not (self.method in PEFT_METHODS and self.zero_stage == 3),
            f"{self.method} with ZeRO-3 is not supported here (PEFT documents and tests ZeRO-3 "
            "sharding for LoRA only); use zero_stage 2",
            "zero_stage",
        )
        # The switches whose default is off: any other value was asked for, also in a config
        # written by hand (the wire's explicitly set settings: ``refuse_unused_settings``).
        for name in ("use_rslora", "loraplus_lr_ratio"):
            _require(
                name not in UNUSED_SETTINGS.get(self.method, ())
                or getattr(self, name) == type(self).model_fields[name].default,
                unused_setting_message(name, self.method),
                name,
            )
        _require(
            bool(self.validation_dataset)
            or (self.eval_steps == 0 and self.early_stopping_patience == 0),
            "eval_steps and early_stopping_patience need a validation_dataset; set one or drop "
            "them",
            "validation_dataset",
        )
        _require(
            not (self.method == "continued_pretraining" and self.train_on_prompt),
            "train_on_prompt has no meaning for continued_pretraining (every token is trained "
            "on); drop it",
            "train_on_prompt",
        )
        _require(
            not (self.is_preference and self.train_on_prompt),
            "train_on_prompt has no meaning for dpo (it compares the two answers' likelihoods); "
            "drop it",
            "train_on_prompt",
        )
        _require(
            not (self.is_preference and self.packing),
            "packing does not apply to dpo (each pair's answers are scored side by side); drop it",
            "packing",
        )
        _require(
            not (self.is_preference and self.padding_free),
            "padding_free is not available for dpo (TRL's DPO trainer pads each batch); drop it",
            "padding_free",
        )
        _require(
            not (self.publish_checkpoints and not self.is_adapter),
            "publish_checkpoints publishes adapter checkpoints; a full fine-tune publishes its "
            "final model only: drop publish_checkpoints or use an adapter method",
            "publish_checkpoints",
        )
        _require(
            not (self.evaluation and self.evaluation.each_checkpoint and not self.is_adapter),
            "evaluation.each_checkpoint scores adapter checkpoints; a full fine-tune is scored "
            "once, at the end: drop each_checkpoint or use an adapter method",
            "evaluation.each_checkpoint",
        )
        return self


FIELDS: dict[str, FieldInfo] = TrainingConfig.model_fields
# Fields that hold a declared config of their own (one proto message each, optional).
NESTED: dict[str, type[BaseModel]] = {"evaluation": TrainingEvalConfig}
# Every leaf setting: TrainingConfig's own fields by name, a nested config's as `field.setting`
# (those declared with `setting()`; a field without a section is filled in by the trainer).
SETTINGS: dict[str, FieldInfo] = {
    **{name: field for name, field in FIELDS.items() if name not in NESTED},
    **{
        f"{root}.{name}": field
        for root, model in NESTED.items()
        for name, field in model.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and "section" in field.json_schema_extra
    },
}


def unused_setting_message(name: str, method: str) -> str:
    why = {
        "ia3": "IA3 learns one scaling vector per module: no rank, alpha, dropout or A and B",
    }.get(method, f"{method} has no LoRA A and B matrices")
    return f"{param_of(name)} does not apply to method {method} ({why}); drop it"


def refuse_unused_settings(method: str, names: Iterable[str]) -> None:
    """``InvalidArgument`` for the first of ``names`` (the settings a request sets) that
    ``method`` does not read (``UNUSED_SETTINGS``): it would be ignored silently otherwise."""
    for name in names:
        _require(
            name not in UNUSED_SETTINGS.get(method, ()),
            unused_setting_message(name, method),
            name,
        )


def ia3_feedforward_modules(targets: tuple[str, ...]) -> tuple[str, ...]:
    """The targets IA3 scales the inputs of (PEFT's ``feedforward_modules``, which must be a
    subset of its targets): the MLP's modules among them, all of them for all-linear."""
    if "all-linear" in targets:
        return FEEDFORWARD_MODULES
    return tuple(name for name in targets if name in FEEDFORWARD_MODULES)


def checkpoint_adapter_name(output_name: str, step: int) -> str:
    """The adapter a job with ``publish_checkpoints`` publishes its checkpoint at ``step`` as."""
    return f"{output_name}-step-{step}"


def field_of(name: str) -> FieldInfo:
    """The declaration of a leaf setting (``SETTINGS``) or of a field of ``TrainingConfig``."""
    return SETTINGS[name] if name in SETTINGS else FIELDS[name]


def extra_of(name: str) -> dict[str, str]:
    """What ``setting()`` attached to a field: ``section``, and ``default_text`` and ``allowed``
    where given."""
    extra = field_of(name).json_schema_extra
    if not isinstance(extra, dict):
        return {}
    return {key: value for key, value in extra.items() if isinstance(value, str)}


def section_of(name: str) -> str:
    return SECTIONS[extra_of(name)["section"]]


def proto_name(name: str) -> str:
    leaf = name.rpartition(".")[2]
    return PROTO_NAMES.get(leaf, leaf)


def param_of(name: str) -> str:
    """The setting's path in a JobSpec, e.g. ``training.hyperparameters.batch_size``: the
    ``param`` of its errors."""
    section = section_of(name)
    return ".".join(filter(None, ("training", section, proto_name(name))))


def _require(ok: bool, message: str, name: str) -> None:
    if not ok:
        raise InvalidArgument(message, param=param_of(name), code="invalid_spec")
