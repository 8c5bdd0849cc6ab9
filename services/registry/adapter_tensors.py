"""An adapter's weights against its ``peft_type``, and its IA3/LoHa/LoKr tensors against the
base model's ``config.json``.

A weights file whose tensors belong to another type than its config says would load as
nothing (PEFT skips names it does not expect) or fail at merge time; one with a type's tensors
missing for a module fails when PEFT loads it. Both are refused at upload.

Shapes, per module PEFT adapts (``in``/``out`` from ``lora_shapes.module_features``; PEFT
0.21's layer code, linear layers):

- IA3: ``ia3_l`` is ``[out, 1]`` (a scale on the module's output) or, for a module in
  ``feedforward_modules``, ``[1, in]`` (on its input). Either orientation is accepted here;
  PEFT itself refuses the wrong one when it loads the adapter.
- LoHa: ``hada_w1_a``/``hada_w2_a`` are ``[out, r]``, ``hada_w1_b``/``hada_w2_b`` ``[r, in]``.
- LoKr: the update is ``kron(W1, W2)`` with ``W1`` = ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``
  and ``W2`` = ``lokr_w2`` or ``lokr_w2_a @ lokr_w2_b``; PEFT sizes the factors so that
  ``W1[0] * W2[0] == out`` and ``W1[1] * W2[1] == in``, and the low-rank halves share their
  inner size. Modules with a ``lokr_t2`` (convolutions) are not checked.
"""

from __future__ import annotations

import re
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, shown
from services.common.peft_types import WEIGHT_MARKERS
from services.registry.lora_shapes import check_lora_shapes, module_features

# The family prefix of each type's tensor names (``hada_`` for LoHa...), from the markers.
FAMILY = {t: {m.split("_", 1)[0] + "_" for m in markers} for t, markers in WEIGHT_MARKERS.items()}
# The parts of a module a complete adapter of the type holds: every group, one alternative of
# each (LoKr's factors are whole or low-rank).
REQUIRED: dict[str, tuple[tuple[frozenset[str], ...], ...]] = {
    "IA3": ((frozenset({"ia3_l"}),),),
    "LOHA": (
        (frozenset({"hada_w1_a", "hada_w1_b"}),),
        (frozenset({"hada_w2_a", "hada_w2_b"}),),
    ),
    "LOKR": (
        (frozenset({"lokr_w1"}), frozenset({"lokr_w1_a", "lokr_w1_b"})),
        (frozenset({"lokr_w2"}), frozenset({"lokr_w2_a", "lokr_w2_b"})),
    ),
}
MODULE_TENSOR = re.compile(
    r"\.layers\.\d+\.(?:self_attn\.(?P<attn>[qkvo]_proj)|mlp\.(?P<mlp>gate_proj|up_proj|down_proj))"
    r"\.(?P<part>ia3_l|hada_w[12]_[ab]|lokr_w[12](?:_[ab])?|lokr_t2)$"
)


def _family(name: str) -> str | None:
    """The adapter type a tensor name belongs to, by its PEFT part (``...q_proj.hada_w1_a``)."""
    for part in name.split("."):
        for peft_type, prefixes in FAMILY.items():
            if any(part.startswith(p) for p in prefixes):
                return peft_type
    return None


def check_weights_type(weights_file: str, peft_type: str, names: list[str]) -> None:
    """Refuse weights that hold another type's tensors, or (IA3/LoHa/LoKr) none of this
    type's, or a module with only some of the tensors the type needs."""
    markers = WEIGHT_MARKERS[peft_type]
    for name in names:
        family = _family(name)
        if family is not None and family != peft_type:
            raise InvalidArgument(
                f"{weights_file}: tensor {shown(name)} is a {family} tensor but "
                f"adapter_config.json says peft_type {peft_type}; a {peft_type} adapter holds "
                f"{'/'.join(markers)} tensors only",
                param="files",
                code="adapter_weights_mismatch",
            )
    if peft_type == "LORA":
        return  # LoRA's own rule (a lora_ tensor at all) is the caller's, unchanged
    modules: dict[str, set[str]] = {}
    for name in names:
        module, _, part = name.rpartition(".")
        if part in markers or part == "lokr_t2":
            modules.setdefault(module, set()).add(part)
    if not modules:
        raise InvalidArgument(
            f"{weights_file} holds no {peft_type} tensors ({'/'.join(markers)})",
            param="files",
            code="adapter_weights_mismatch",
        )
    for module, parts in sorted(modules.items()):
        for alternatives in REQUIRED[peft_type]:
            if not any(alt <= parts for alt in alternatives):
                needed = " or ".join("+".join(sorted(alt)) for alt in alternatives)
                raise InvalidArgument(
                    f"{weights_file}: module {shown(module)} has {', '.join(sorted(parts))} but "
                    f"a {peft_type} module needs {needed}",
                    param="files",
                    code="adapter_weights_mismatch",
                )


def _mismatch(
    weights_file: str,
    what: str,
    shape: tuple[int, ...],
    expected: str,
    base_model: str,
    module: str,
    features: tuple[int, int],
) -> FailedPrecondition:
    fan_in, fan_out = features
    return FailedPrecondition(
        f"{weights_file}: {what} has shape {list(shape)} but base model {base_model} needs "
        f"{expected} for its {module} (in {fan_in}, out {fan_out} features): the adapter was "
        "trained on another model",
        param="base_model",
        code="base_model_mismatch",
    )


def _check_module(
    weights_file: str,
    prefix: str,
    parts: dict[str, tuple[int, ...]],
    module: str,
    features: tuple[int, int],
    base_model: str,
) -> None:
    fan_in, fan_out = features

    def fail(part: str, expected: str) -> FailedPrecondition:
        name = shown(f"{prefix}.{part}")
        return _mismatch(
            weights_file, f"tensor {name}", parts[part], expected, base_model, module, features
        )

    for part, shape in sorted(parts.items()):
        if part == "ia3_l" and shape not in ((fan_out, 1), (1, fan_in)):
            raise fail(part, f"[{fan_out}, 1] or [1, {fan_in}]")
        if part.startswith("hada_") and part.endswith("_a") and shape[0] != fan_out:
            raise fail(part, f"[{fan_out}, r]")
        if part.startswith("hada_") and part.endswith("_b") and shape[1] != fan_in:
            raise fail(part, f"[r, {fan_in}]")
    for i in ("1", "2"):
        a, b = parts.get(f"hada_w{i}_a"), parts.get(f"hada_w{i}_b")
        if a and b and a[1] != b[0]:
            raise fail(f"hada_w{i}_b", f"[{a[1]}, {fan_in}] (r of hada_w{i}_a)")
    if "lokr_t2" in parts:
        return
    factors: list[tuple[int, ...]] = []
    for i in ("1", "2"):
        whole, low_a, low_b = (parts.get(f"lokr_w{i}{s}") for s in ("", "_a", "_b"))
        if whole:
            factors.append(whole)
        elif low_a and low_b:
            if low_a[1] != low_b[0]:
                raise fail(f"lokr_w{i}_b", f"[{low_a[1]}, ...] (r of lokr_w{i}_a)")
            factors.append((low_a[0], low_b[1]))
    if len(factors) == 2:
        (rows1, cols1), (rows2, cols2) = factors
        product = (rows1 * rows2, cols1 * cols2)
        if product != (fan_out, fan_in):
            what = f"the Kronecker product of the factors of {shown(prefix)}"
            raise _mismatch(
                weights_file,
                what,
                product,
                f"[{fan_out}, {fan_in}]",
                base_model,
                module,
                features,
            )


def check_adapter_shapes(
    weights_file: str,
    peft_type: str,
    shapes: dict[str, tuple[int, ...]],
    base_config: dict[str, Any],
    base_model: str,
) -> None:
    """Refuse the first adapter tensor whose shape does not fit ``base_model``'s modules."""
    if peft_type == "LORA":
        check_lora_shapes(weights_file, shapes, base_config, base_model)
        return
    features = module_features(base_config)
    modules: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {}
    for name, shape in shapes.items():
        match = MODULE_TENSOR.search(name)
        if match is None:
            continue
        module = match["attn"] or match["mlp"]
        if module not in features or (len(shape) != 2 and match["part"] != "lokr_t2"):
            continue
        prefix = name[: match.start("part") - 1]
        modules.setdefault(prefix, (module, {}))[1][match["part"]] = shape
    for prefix, (module, parts) in sorted(modules.items()):
        _check_module(weights_file, prefix, parts, module, features[module], base_model)
