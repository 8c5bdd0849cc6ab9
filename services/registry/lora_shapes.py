"""An adapter's LoRA tensors against its base model's ``config.json``: an adapter trained on
another model can have the same module names and still not fit, and would then fail only when
the gateway loads it (or, worse, load into a model it was never trained on).

Each ``<layers.N>.self_attn.{q,k,v,o}_proj`` and ``<layers.N>.mlp.{gate,up,down}_proj`` (the
Llama/Qwen/Mistral names) has input and output features that the config gives: ``lora_A`` is
``[r, in]`` and ``lora_B`` is ``[out, r]``. Other modules, and configs that do not say, are
not checked here.
"""

from __future__ import annotations

import re
from typing import Any

from services.common.errors import FailedPrecondition, shown

# The parent module is part of the pattern: experts of a mixture (``mlp.experts.3.up_proj``)
# have other sizes than the config's intermediate_size.
LORA_TENSOR = re.compile(
    r"\.layers\.\d+\.(?:self_attn\.(?P<attn>[qkvo]_proj)|mlp\.(?P<mlp>gate_proj|up_proj|down_proj))"
    r"\.lora_(?P<half>[AB])(?:\.[^.]+)?\.weight$"
)


def _positive_int(value: object) -> int | None:
    return value if type(value) is int and value > 0 else None


def module_features(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` of each standard projection the config sizes."""
    hidden = _positive_int(config.get("hidden_size"))
    if hidden is None:
        return {}
    features: dict[str, tuple[int, int]] = {}
    heads = _positive_int(config.get("num_attention_heads"))
    if heads:
        head_dim = _positive_int(config.get("head_dim")) or hidden // heads
        kv_heads = _positive_int(config.get("num_key_value_heads")) or heads
        features.update(
            q_proj=(hidden, heads * head_dim),
            k_proj=(hidden, kv_heads * head_dim),
            v_proj=(hidden, kv_heads * head_dim),
            o_proj=(heads * head_dim, hidden),
        )
    intermediate = _positive_int(config.get("intermediate_size"))
    if intermediate:
        features.update(
            gate_proj=(hidden, intermediate),
            up_proj=(hidden, intermediate),
            down_proj=(intermediate, hidden),
        )
    return features


def check_lora_shapes(
    weights_file: str,
    shapes: dict[str, tuple[int, ...]],
    base_config: dict[str, Any],
    base_model: str,
) -> None:
    """Refuse the first LoRA tensor whose shape does not fit ``base_model``'s modules."""
    features = module_features(base_config)
    for name, shape in sorted(shapes.items()):
        match = LORA_TENSOR.search(name)
        if match is None or len(shape) != 2:
            continue
        module = match["attn"] or match["mlp"]
        if module not in features:
            continue
        fan_in, fan_out = features[module]
        expected = (shape[0], fan_in) if match["half"] == "A" else (fan_out, shape[1])
        if shape != expected:
            raise FailedPrecondition(
                f"{weights_file}: tensor {shown(name)} has shape {list(shape)} but base model "
                f"{base_model} needs {list(expected)} for its {module} (in {fan_in}, out "
                f"{fan_out} features): the adapter was trained on another model",
                param="base_model",
                code="base_model_mismatch",
            )
