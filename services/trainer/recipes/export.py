"""Export recipe: merge a LoRA/DoRA, IA3, LoHa or LoKr adapter into its base model and save a
plain HF model, for runtimes that cannot load adapters (Ollama, some TensorRT-LLM setups, vLLM
for DoRA, ``modules_to_save`` and the types it has no runtime loading for).

    python -m services.trainer.recipes.export --config job.json --output DIR

``job.json`` is an ``ExportRecipeConfig``: ``{"export": {...ExportConfig...}, "adapter_dir":
"<PEFT folder>", "model_dir": "<HF folder of its base>"}``.

1. validate: the adapter is LoRA/DoRA, IA3, LoHa or LoKr and merges cleanly (not into tied
   embeddings);
   the load precision follows ``merge_load_plan``: the adapter's training precision from its
   ``training_report.json``, fp32 when there is none, the *unquantized* base for QLoRA;
2. merge: the base on the CPU (a merge is one ``B @ A`` per module, a Hadamard or Kronecker
   product of small factors for LoHa/LoKr, a scale for IA3: cheap next to loading and
   saving, and host memory is larger than a GPU's), ``PeftModel.from_pretrained``,
   ``merge_and_unload()``;
3. cast to the requested dtype (bf16 default) and check every weight is finite: a broken
   adapter's NaN, an fp16 overflow (the registry does not scan model weights). One pass over
   the output; PEFT's ``safe_merge`` would clone every weight to check the same before it;
4. save: safetensors shards, tokenizer and chat template, ``export_report.json``, and an
   Ollama ``Modelfile`` when asked.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from services.common.errors import FailedPrecondition
from services.common.peft_types import MERGED, WEIGHT_MARKERS
from services.trainer.export_spec import ExportConfig, LoadPlan, merge_load_plan
from services.trainer.recipes.common import recipe_main
from services.trainer.worker.protocol import emit

P = "export.adapter"
EMBEDDINGS = ("embed_tokens", "lm_head", "wte", "embed_out")
# PEFT's merge_and_unload folds each of these types' updates into plain weights.
MERGEABLE = ("LORA", *MERGED)
# What a module that PEFT left unmerged still holds: its wrapped base layer, or any adapter
# type's tensors (lora_A, hada_w1_a, lokr_w1, ia3_l...), named by each type's family prefix.
LEFTOVER_MARKS = (
    "base_layer",
    *sorted({m.split("_", 1)[0] + "_" for ms in WEIGHT_MARKERS.values() for m in ms}),
)


class ExportRecipeConfig(BaseModel):
    """The export recipe's input: the validated spec and local folders (the worker pulls them
    from the registry; by hand they are any PEFT adapter folder and its base model folder)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    export: ExportConfig
    adapter_dir: Path
    model_dir: Path
    report: dict = {}


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def training_of(adapter_dir: Path) -> dict | None:
    """The adapter's training hyper-parameters (method, precision), from its report."""
    report = read_json(adapter_dir / "training_report.json")
    if not report:
        return None
    return {**report.get("hyperparameters", {}), "method": report.get("method", "lora")}


def check_mergeable(adapter: dict, base: dict) -> None:
    """Refuse, with the reason, the adapters a merge would get wrong."""
    peft_type = str(adapter.get("peft_type", "LORA")).upper()
    if peft_type not in MERGEABLE:
        raise FailedPrecondition(
            f"a {peft_type} adapter does not merge into its base; {', '.join(MERGEABLE)} "
            "adapters do (LoRA includes DoRA)",
            param=P,
            code="unsupported_adapter",
        )
    if adapter.get("layer_replication"):
        raise FailedPrecondition(
            "the adapter replicates layers (layer_replication), which changes the architecture; "
            "it cannot be merged into the base model",
            param=P,
            code="unsupported_adapter",
        )
    targets = adapter.get("target_modules") or []
    touched = [targets] if isinstance(targets, str) else list(targets)
    touched += list(adapter.get("modules_to_save") or [])
    hit = sorted({m for m in touched for e in EMBEDDINGS if e in m})
    if hit and base.get("tie_word_embeddings"):
        raise FailedPrecondition(
            f"the adapter changes {', '.join(hit)} while the base model ties its input and output "
            "embeddings: merging would change both at once; train without the embeddings in "
            "target_modules/modules_to_save",
            param=P,
            code="unsupported_adapter",
        )


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def merge(adapter_dir: Path, model_dir: Path, plan: LoadPlan, timings: dict[str, float]):
    """The base with the adapter merged in, as a plain transformers model (CPU). Adds
    ``load_seconds`` and ``merge_seconds`` to ``timings``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(plan.dtype))
    loaded = time.monotonic()
    timings["load_seconds"] = loaded - started
    try:
        model = PeftModel.from_pretrained(base, adapter_dir)
    except RuntimeError as exc:  # shape mismatches: another base, a resized vocabulary
        raise FailedPrecondition(
            f"the adapter does not fit its base model ({str(exc).splitlines()[0][:300]})",
            param=P,
            code="adapter_base_mismatch",
        ) from None
    merged = model.merge_and_unload()  # non-finite results are caught by cast_checked
    leftovers = [
        n for n, _ in merged.named_parameters() if any(mark in n for mark in LEFTOVER_MARKS)
    ]
    if leftovers:
        raise FailedPrecondition(
            f"modules were left unmerged ({', '.join(leftovers[:3])}); this adapter type does "
            "not merge cleanly",
            param=P,
            code="unsupported_adapter",
        )
    timings["merge_seconds"] = time.monotonic() - loaded
    return merged


def cast_checked(model, precision: str):
    """``model`` in the output dtype, refusing weights the dtype cannot hold."""
    import torch

    model = model.to(torch_dtype(precision))
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            advice = (
                "; export in bf16 or fp32" if precision == "fp16" else ": the adapter is broken"
            )
            raise FailedPrecondition(
                f"weight {name} is not finite in {precision}{advice}",
                param="export.precision",
                code="merge_not_finite",
            )
    return model


def save_tokenizer(adapter_dir: Path, model_dir: Path, output: Path):
    """The tokenizer and chat template the adapter was trained with (the trainer saves them
    beside it), else the base model's."""
    from transformers import AutoTokenizer

    source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else model_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(output)
    return tokenizer


def write_modelfile(tokenizer, output: Path) -> None:
    from services.trainer.recipes.ollama import modelfile

    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is the chat template
        template = template.get("default")
    text = modelfile(template, special)
    (output / "Modelfile").write_text(text)


def run(config: ExportRecipeConfig, output: Path) -> dict:
    """Merge an adapter into its base model and save the result as a plain HF model."""
    e = config.export
    adapter_cfg = read_json(config.adapter_dir / "adapter_config.json")
    base_cfg = read_json(config.model_dir / "config.json")
    if adapter_cfg is None or base_cfg is None:
        raise FailedPrecondition(
            "the adapter folder needs adapter_config.json and the base folder config.json",
            param=P,
            code="unsupported_adapter",
        )
    check_mergeable(adapter_cfg, base_cfg)
    plan = merge_load_plan(training_of(config.adapter_dir))
    emit("state", state="RUNNING", message=f"merging in {plan.dtype} ({plan.reason})")

    timings: dict[str, float] = {}
    merged = merge(config.adapter_dir, config.model_dir, plan, timings)
    merged_at = time.monotonic()
    merged = cast_checked(merged, e.precision)
    output.mkdir(parents=True, exist_ok=True)
    # transformers 5 writes safetensors only; the registry refuses pickles anyway.
    merged.save_pretrained(output, max_shard_size=e.max_shard_size)
    tokenizer = save_tokenizer(config.adapter_dir, config.model_dir, output)
    if e.ollama_modelfile:
        write_modelfile(tokenizer, output)
    saved_at = time.monotonic()

    metrics = {
        **timings,
        "cast_check_and_save_seconds": saved_at - merged_at,
        "parameters": float(sum(p.numel() for p in merged.parameters())),
        "peak_memory_bytes": float(peak_rss_bytes()),
    }
    report = {
        **config.report,
        "adapter": config.report.get("adapter", e.adapter),
        "base_model": config.report.get("base_model", e.base_model),
        "load_precision": plan.dtype,
        "load_reason": plan.reason,
        "precision": e.precision,
        "ollama_modelfile": e.ollama_modelfile,
        "metrics": metrics,
    }
    (output / "export_report.json").write_text(json.dumps(report, indent=2))
    emit("result", metrics=metrics)
    return report


def main() -> None:
    recipe_main(run, ExportRecipeConfig)


if __name__ == "__main__":
    main()
