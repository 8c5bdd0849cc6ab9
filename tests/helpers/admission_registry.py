"""What admission asks of the registry, answered without one, for unit tests of CreateJob's
checks: every model, dataset and adapter exists at version 1, a model has SmolLM2-135M's
config.json, a dataset whose name ends in ``-heldout`` is an eval set of 10 items, one ending
in ``-pairs`` a preference set of 10 pairs (any other a chat dataset of 10 examples), an
adapter is a LoRA adapter on ``smollm2-135m-instruct@1``, and no model or
adapter name is taken for an export's output."""

from __future__ import annotations

from services.common.errors import NotFound
from services.common.stubs import registry_pb2

# SmolLM2-135M-Instruct's config.json (the shape the memory estimate reads).
SMOLLM2_CONFIG = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
BASE = "smollm2-135m-instruct@1"


class RegistryAtVersionOne:
    """Stands in for ``RegistryPullCache`` and, as its ``client``, for the registry client."""

    def __init__(self) -> None:
        self.client = self

    def resolve(self, kind: str, ref: str, param: str = "") -> registry_pb2.ArtifactVersion:
        found = registry_pb2.ArtifactVersion(name=ref.partition("@")[0], version=1)
        if kind == "adapter":
            found.adapter.CopyFrom(registry_pb2.AdapterInfo(base_model=BASE, peft_type="LORA"))
        elif kind == "dataset":
            found.dataset.format = registry_pb2.DATASET_FORMAT_CHAT
            if found.name.endswith("-heldout"):
                found.dataset.format = registry_pb2.DATASET_FORMAT_EVAL
            elif found.name.endswith("-pairs"):
                found.dataset.format = registry_pb2.DATASET_FORMAT_PREFERENCE
            found.dataset.num_examples = 10
        return found

    def model_config(self, model: registry_pb2.ArtifactVersion) -> dict:
        return dict(SMOLLM2_CONFIG)

    def get(self, kind: str, name: str) -> registry_pb2.Artifact:
        raise NotFound(f"no {kind} {name}")
