"""The eval spec (a model or adapter version scored on an eval set by graders), typed and
validated up front.

``eval_config_from_proto`` turns a wire ``EvalSpec`` into a frozen ``EvalConfig`` or refuses it
with the field at fault; admission then pins ``model``, its base, the eval set and every SQLite
database a grader names to exact versions (``name@version``), so a resumed attempt scores the
same weights on the same items. The worker reads only ``EvalConfig`` (its JSON form travels to
the worker), never the proto.

``sampling_from_proto`` and ``graders_from_proto`` are shared with the training spec's
end-of-run evaluation (``TrainingSpec.evaluation``), which carries the same two messages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel, ConfigDict, Field

from services.common.errors import InvalidArgument
from services.common.refs import check_name, parse_ref
from services.common.stubs import trainer_pb2
from services.evaluation.graders import validate_graders
from services.evaluation.sampling import MAX_SEED, MAX_TEMPERATURE, MAX_TOKENS, SamplingConfig

E = "evaluation."
Backend = Literal["auto", "gateway", "local"]
BACKENDS: dict[trainer_pb2.EvalBackend, Backend] = {
    trainer_pb2.EVAL_BACKEND_UNSPECIFIED: "auto",
    trainer_pb2.EVAL_BACKEND_GATEWAY: "gateway",
    trainer_pb2.EVAL_BACKEND_LOCAL: "local",
}
DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 256


class EvalConfig(BaseModel):
    """Every knob of an eval job. Frozen: what was validated is what runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Tells a stored eval config from the other kinds (``job_config_from_json``).
    kind: Literal["evaluation"] = "evaluation"
    # As given, then pinned to `name@version` by admission.
    model: str
    # Filled in by admission: what `model` resolved to, and the base its weights run on
    # (for an adapter its base model; for a model the model itself).
    model_kind: Literal["adapter", "model"] = "model"
    base_model: str = ""
    eval_set: str
    # The normalised grader specs (defaults filled in): what the summary's digest covers.
    graders: list[dict[str, Any]]
    # Each `database` ref as a grader spells it -> the SQLite dataset version it pinned to.
    databases: dict[str, str] = Field(default_factory=dict)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    concurrency: int = DEFAULT_CONCURRENCY
    backend: Backend = "auto"
    # Name of the EVALUATION artifact; admission defaults it to the eval set's name.
    output_name: str = ""
    # Items in the eval set (filled in by admission, shown as the job's total steps).
    num_items: int = 0

    @property
    def output_kind(self) -> str:
        return "evaluation"

    # The supervisor and the runners ask every job for these. A local-backend eval generates
    # on whatever device its worker finds, one process: it never asks for GPUs by count.
    @property
    def num_gpus(self) -> int:
        return 0

    @property
    def zero_stage(self) -> int:
        return 0


def _refuse(message: str, param: str) -> InvalidArgument:
    return InvalidArgument(message, param=param, code="invalid_spec")


def _check_ref(ref: str, param: str, example: str) -> None:
    if not ref:
        raise _refuse(f"{param} is required, e.g. `{example}`", param)
    try:
        parse_ref(ref, param=param)
    except InvalidArgument as exc:
        raise _refuse(exc.message, exc.param or param) from None


def _whole_numbers(value: Any) -> Any:
    """A ``Struct`` holds every number as a double: give integral ones back as ints, so a spec
    that travelled through the proto normalises (and digests) like the same spec from a file."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def graders_from_proto(
    structs: Iterable[struct_pb2.Struct], param: str = E + "graders"
) -> list[dict[str, Any]]:
    """The grader objects of a spec, validated and normalised (``validate_graders``)."""
    specs = [_whole_numbers(json_format.MessageToDict(s)) for s in structs]
    return validate_graders(specs, param=param)


def graders_to_proto(graders: list[dict[str, Any]]) -> list[struct_pb2.Struct]:
    return [json_format.ParseDict(g, struct_pb2.Struct()) for g in graders]


def _finite(value: float, low: float, high: float, param: str, what: str) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise _refuse(f"{param.rsplit('.', 1)[-1]} must be {what}, got {value}", param)
    return value


def sampling_from_proto(params: trainer_pb2.SamplingParams, prefix: str) -> SamplingConfig:
    """Sampling settings with the defaults applied (greedy, 256 tokens, top_p 1, seed 42);
    ``prefix`` is where the message sits in the spec, e.g. ``evaluation.sampling.``."""
    defaults = SamplingConfig()
    temperature = defaults.temperature
    if params.HasField("temperature"):
        temperature = _finite(
            params.temperature,
            0.0,
            MAX_TEMPERATURE,
            prefix + "temperature",
            f"between 0 (greedy) and {MAX_TEMPERATURE:g}",
        )
    max_tokens = params.max_tokens or defaults.max_tokens
    if not 1 <= max_tokens <= MAX_TOKENS:
        raise _refuse(
            f"max_tokens must be between 1 and {MAX_TOKENS} (0 means {defaults.max_tokens}), "
            f"got {params.max_tokens}",
            prefix + "max_tokens",
        )
    top_p = defaults.top_p
    if params.HasField("top_p"):
        top_p = _finite(params.top_p, 0.0, 1.0, prefix + "top_p", "in (0, 1]")
        if top_p == 0:
            raise _refuse("top_p must be in (0, 1]; 1 keeps every token", prefix + "top_p")
    seed = defaults.seed
    if params.HasField("seed"):
        if not 0 <= params.seed < MAX_SEED:
            raise _refuse(
                f"seed must be between 0 and {MAX_SEED - 1}, got {params.seed}", prefix + "seed"
            )
        seed = params.seed
    return SamplingConfig(temperature=temperature, max_tokens=max_tokens, top_p=top_p, seed=seed)


def sampling_to_proto(sampling: SamplingConfig) -> trainer_pb2.SamplingParams:
    return trainer_pb2.SamplingParams(
        temperature=sampling.temperature,
        max_tokens=sampling.max_tokens,
        top_p=sampling.top_p,
        seed=sampling.seed,
    )


def eval_config_from_proto(spec: trainer_pb2.EvalSpec) -> EvalConfig:
    """Validate ``spec`` and apply the defaults."""
    _check_ref(spec.model, E + "model", "sql-lora@3")
    _check_ref(spec.eval_set, E + "eval_set", "shop-sql-heldout")
    if spec.output_name:
        try:
            check_name(spec.output_name, "output_name", param=E + "output_name")
        except InvalidArgument as exc:
            raise _refuse(exc.message, exc.param or E + "output_name") from None
    if spec.backend not in BACKENDS:
        raise _refuse(
            f"unknown backend {spec.backend}; use gateway, local or leave it unset (auto)",
            E + "backend",
        )
    concurrency = spec.concurrency or DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise _refuse(
            f"concurrency must be between 1 and {MAX_CONCURRENCY} (0 means "
            f"{DEFAULT_CONCURRENCY}), got {spec.concurrency}",
            E + "concurrency",
        )
    return EvalConfig(
        model=spec.model,
        eval_set=spec.eval_set,
        graders=graders_from_proto(spec.graders),
        sampling=sampling_from_proto(spec.sampling, E + "sampling."),
        concurrency=concurrency,
        backend=BACKENDS[spec.backend],
        output_name=spec.output_name,
    )


def eval_config_to_proto(config: EvalConfig) -> trainer_pb2.EvalSpec:
    """The spec with the pinned refs and the defaults filled in, as stored and shown."""
    return trainer_pb2.EvalSpec(
        model=config.model,
        eval_set=config.eval_set,
        graders=graders_to_proto(config.graders),
        sampling=sampling_to_proto(config.sampling),
        concurrency=config.concurrency,
        backend={v: k for k, v in BACKENDS.items()}[config.backend],
        output_name=config.output_name,
    )
