"""The artifact kinds by the names users type (`tuneplex artifacts list --kind adapter`): one
table for the registry, which stores the names, and the clients, which send the enum."""

from __future__ import annotations

from services.common.stubs import registry_pb2

KINDS: dict[str, registry_pb2.ArtifactKind] = {
    "dataset": registry_pb2.ARTIFACT_KIND_DATASET,
    "adapter": registry_pb2.ARTIFACT_KIND_ADAPTER,
    "model": registry_pb2.ARTIFACT_KIND_MODEL,
    "evaluation": registry_pb2.ARTIFACT_KIND_EVALUATION,
    "eval_definition": registry_pb2.ARTIFACT_KIND_EVAL_DEFINITION,
}
KIND_NAMES: dict[int, str] = {v: k for k, v in KINDS.items()}
