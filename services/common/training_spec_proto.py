"""The training spec on the wire: ``TrainingSpec`` <-> settings by field name (the declaration
says which section each travels in; ``PROTO_NAMES`` and ``ENUMS`` hold the only renames), and
the one entry to a validated ``TrainingConfig`` whose errors name the proto field at fault.

A nested config (``evaluation``) is a dict of its own settings in the values, an optional
message on the wire: absent there, ``None`` here."""

from __future__ import annotations

from collections.abc import Mapping
from functools import reduce
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import ValidationError

from services.common.errors import InvalidArgument
from services.common.stubs import trainer_pb2
from services.common.training_spec import (
    ENUMS,
    FIELDS,
    NESTED,
    SETTINGS,
    UNUSED_SETTINGS,
    TrainingConfig,
    param_of,
    proto_name,
    refuse_unused_settings,
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
    refuse_unused_settings(config.method, values)
    return config


def _message_at(spec: Message, section: str) -> Any:
    """The message a section travels in: ``spec`` itself, ``spec.lora``, ``spec.evaluation.
    sampling``, ..."""
    return reduce(getattr, section.split("."), spec) if section else spec


def values_from_proto(spec: trainer_pb2.TrainingSpec) -> dict[str, Any]:
    """The settings ``spec`` sets, by config field name, enums as their names, a nested
    config's as a dict under its field. A proto3 zero value is "unset" and left out so the
    declared default applies; a field with explicit presence (``optional``) counts when
    present, 0 included."""
    values: dict[str, Any] = {}
    for root in NESTED:
        if spec.HasField(root):
            values[root] = {}
    for name in SETTINGS:
        root, dot, leaf = name.partition(".")
        if dot and root not in values:
            continue  # the nested message is absent: no nested config at all
        section, field_name = section_of(name), proto_name(name)
        message = _message_at(spec, section)
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
        elif descriptor.is_repeated and descriptor.message_type is not None:
            value = tuple(json_format.MessageToDict(item) for item in value)  # Structs
        elif descriptor.is_repeated:
            value = tuple(value)
        if dot:
            values[root][leaf] = value
        else:
            values[name] = value
    return values


def _set(spec: trainer_pb2.TrainingSpec, name: str, value: Any) -> None:
    """Set the leaf setting ``name`` (``SETTINGS``) in ``spec``."""
    section, field_name = section_of(name), proto_name(name)
    message = _message_at(spec, section)
    if name in ENUMS:
        numbers = {v: k for k, v in ENUMS[name].items()}
        if value not in numbers:
            raise InvalidArgument(
                f"unknown {name} {value!r}; use one of {', '.join(numbers)}",
                param=param_of(name),
                code="invalid_spec",
            )
        value = numbers[value]
    descriptor = message.DESCRIPTOR.fields_by_name[field_name]
    if descriptor.is_repeated and descriptor.message_type is not None:
        for item in value:  # JSON objects into Structs
            json_format.ParseDict(item, getattr(message, field_name).add())
    elif descriptor.is_repeated:
        getattr(message, field_name).extend(value)
    else:
        setattr(message, field_name, value)


def spec_from_values(values: Mapping[str, Any]) -> trainer_pb2.TrainingSpec:
    """A ``TrainingSpec`` that sets exactly ``values`` (config field names, enums by name, a
    nested config as a dict of its settings or None); what is left out stays unset, i.e. takes
    its default on the trainer. Not validated here: the trainer does that, once."""
    unknown = sorted(set(values) - set(FIELDS))
    for root in NESTED:
        if isinstance(values.get(root), Mapping):
            unknown += sorted(f"{root}.{n}" for n in values[root] if f"{root}.{n}" not in SETTINGS)
    if unknown:
        raise InvalidArgument(
            f"unknown training setting(s) {', '.join(unknown)}; use fields of TrainingConfig",
            param="training",
            code="invalid_spec",
        )
    spec = trainer_pb2.TrainingSpec()
    for name, value in values.items():
        if name not in NESTED:
            _set(spec, name, value)
        elif value is not None:
            getattr(spec, name).SetInParent()  # present, even with every setting at default
            for leaf, leaf_value in value.items():
                _set(spec, f"{name}.{leaf}", leaf_value)
    return spec


def config_to_proto(config: TrainingConfig) -> trainer_pb2.TrainingSpec:
    """The spec with its defaults filled in, as stored and shown back to users. LoRA settings
    are left out for a method that trains no adapter (the trainer would refuse them)."""
    values = config.model_dump(mode="json")
    if not config.is_adapter:
        values = {n: v for n, v in values.items() if section_of(n) != "lora"}
    # Nor those the method does not read (ia3's rank...): sent back, they would be refused.
    values = {n: v for n, v in values.items() if n not in UNUSED_SETTINGS.get(config.method, ())}
    for root in NESTED:  # what the trainer filled in (pinned databases) is not on the wire
        if values.get(root) is not None:
            values[root] = {n: v for n, v in values[root].items() if f"{root}.{n}" in SETTINGS}
    return spec_from_values(values)
