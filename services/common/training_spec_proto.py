"""The training spec on the wire: ``TrainingSpec`` <-> settings by field name (the declaration
says which section each travels in; ``PROTO_NAMES`` and ``ENUMS`` hold the only renames), and
the one entry to a validated ``TrainingConfig`` whose errors name the proto field at fault."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from services.common.errors import InvalidArgument
from services.common.stubs import trainer_pb2
from services.common.training_spec import (
    ENUMS,
    FIELDS,
    TrainingConfig,
    param_of,
    proto_name,
    section_of,
)
from services.common.training_spec_text import refusal


def config_from_values(values: Mapping[str, Any]) -> TrainingConfig:
    """``TrainingConfig`` from settings by field name (those left out take their defaults), or
    ``InvalidArgument`` naming the first setting at fault and what to change."""
    try:
        config = TrainingConfig(**values)
    except ValidationError as exc:
        raise refusal(exc.errors()[0]) from None
    if not config.is_adapter and any(section_of(n) == "lora" for n in values):
        raise InvalidArgument(
            "lora settings apply to adapter methods only; drop them for method full",
            param="training.lora",
            code="invalid_spec",
        )
    return config


def values_from_proto(spec: trainer_pb2.TrainingSpec) -> dict[str, Any]:
    """The settings ``spec`` sets, by config field name, enums as their names. A proto3 zero
    value is "unset" and left out so the declared default applies; a field with explicit
    presence (``optional``) counts when present, 0 included."""
    values: dict[str, Any] = {}
    for name in FIELDS:
        section, field_name = section_of(name), proto_name(name)
        message = getattr(spec, section) if section else spec
        descriptor = message.DESCRIPTOR.fields_by_name[field_name]
        value = getattr(message, field_name)
        if descriptor.has_presence and not message.HasField(field_name):
            continue
        if not descriptor.has_presence and not value:
            continue
        if name in ENUMS:
            if value not in ENUMS[name]:
                raise InvalidArgument(
                    f"unknown {name} {value}; use one of {', '.join(ENUMS[name].values())}",
                    param=param_of(name),
                    code="invalid_spec",
                )
            value = ENUMS[name][value]
        elif descriptor.is_repeated:
            value = tuple(value)
        values[name] = value
    return values


def spec_from_values(values: Mapping[str, Any]) -> trainer_pb2.TrainingSpec:
    """A ``TrainingSpec`` that sets exactly ``values`` (config field names, enums by name);
    what is left out stays unset, i.e. takes its default on the trainer. Not validated here:
    the trainer does that, once."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise InvalidArgument(
            f"unknown training setting(s) {', '.join(unknown)}; use fields of TrainingConfig",
            param="training",
            code="invalid_spec",
        )
    spec = trainer_pb2.TrainingSpec()
    for name, value in values.items():
        section, field_name = section_of(name), proto_name(name)
        message = getattr(spec, section) if section else spec
        if name in ENUMS:
            numbers = {v: k for k, v in ENUMS[name].items()}
            if value not in numbers:
                raise InvalidArgument(
                    f"unknown {name} {value!r}; use one of {', '.join(numbers)}",
                    param=param_of(name),
                    code="invalid_spec",
                )
            value = numbers[value]
        if message.DESCRIPTOR.fields_by_name[field_name].is_repeated:
            getattr(message, field_name).extend(value)
        else:
            setattr(message, field_name, value)
    return spec


def config_to_proto(config: TrainingConfig) -> trainer_pb2.TrainingSpec:
    """The spec with its defaults filled in, as stored and shown back to users. LoRA settings
    are left out for a method that trains no adapter (the trainer would refuse them)."""
    values = config.model_dump()
    if not config.is_adapter:
        values = {n: v for n, v in values.items() if section_of(n) != "lora"}
    return spec_from_values(values)
