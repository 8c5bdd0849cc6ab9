"""Which PEFT adapter types tuneplex takes, and how each is served: one table for the registry
(which accepts an adapter by its `peft_type`), the export recipe (which merges it) and the
gateway (which loads it at runtime or serves its merge).

vLLM loads LoRA adapters at runtime (DoRA and `modules_to_save` aside, decided from the
adapter's config). IA3, LoHa and LoKr change the base's weights in a way a merge folds into
plain weights (PEFT's `merge_and_unload`), so they are served from a merged model.
"""

from __future__ import annotations

RUNTIME_LOADED = ("LORA",)
MERGED = ("IA3", "LOHA", "LOKR")
ACCEPTED = (*RUNTIME_LOADED, *MERGED)
# The tensor-name marker every adapter of a type has in its weights file (PEFT's own names).
WEIGHT_MARKERS = {
    "LORA": ("lora_A", "lora_B"),
    "IA3": ("ia3_l",),
    "LOHA": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "LOKR": ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"),
}
