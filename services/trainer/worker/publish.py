"""The one step every kind of work ends with: publish the result once per job.

A worker killed after the registry committed its push but before it reported is retried; the
retry must find the version its job published (``lineage.job_id``) rather than redo the work
and publish a second one. The registry's upload is atomic, so a worker killed before that
leaves no visible version and the next attempt starts over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2

from services.client.registry import RegistryClient
from services.common.errors import NotFound, TuneplexError
from services.common.stubs import registry_pb2
from services.trainer.artifacts import version_ref
from services.trainer.worker.protocol import emit


@dataclass(frozen=True)
class Publication:
    """What a finished piece of work pushes."""

    folder: Path
    description: str
    source: str
    # Lineage fields (job_id, base_model, dataset, adapter, ...) as ``name@version`` strings;
    # an evaluation's ``databases`` is a list of them.
    lineage: Mapping[str, str | list[str]]
    metrics: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] | None = None
    base_model: str | None = None  # an adapter names the base it applies to


def versions_of(client: RegistryClient, kind: str, name: str) -> list[registry_pb2.ArtifactVersion]:
    """Every version of ``kind`` ``name``; none when the name is unknown."""
    try:
        return list(client.versions(kind, name))
    except NotFound:
        return []


def own_version(
    client: RegistryClient,
    kind: str,
    name: str,
    job_id: str,
    *,
    name_taken: TuneplexError | None = None,
) -> registry_pb2.ArtifactVersion | None:
    """The version of ``kind`` ``name`` an earlier attempt of ``job_id`` published, if any.
    With ``name_taken``, the name must otherwise be unused: that error when it is not."""
    versions = versions_of(client, kind, name)
    ours = next((v for v in versions if v.lineage.job_id == job_id), None)
    if ours is None and versions and name_taken is not None:
        raise name_taken
    return ours


def publish_once(
    client: RegistryClient,
    kind: str,
    name: str,
    job_id: str,
    work: Callable[[], Publication | None],
    *,
    name_taken: TuneplexError | None = None,
) -> str | None:
    """Run ``work`` and push what it returns as a new version of ``kind`` ``name``, unless an
    earlier attempt of ``job_id`` already published one. Returns ``name@version``; None when
    ``work`` returns None (a torchrun rank other than 0: it trains, rank 0 publishes)."""
    done = own_version(client, kind, name, job_id, name_taken=name_taken)
    if done is not None:
        ref = version_ref(done)
        emit("log", message=f"an earlier attempt published {ref}")
        emit("published", output=ref, metrics=dict(done.lineage.metrics))
        return ref
    publication = work()
    if publication is None:
        return None
    # ParseDict rather than Lineage(**fields): each key is checked against the message's fields.
    lineage = json_format.ParseDict(
        {**publication.lineage, "metrics": publication.metrics}, registry_pb2.Lineage()
    )
    if publication.hyperparameters is not None:
        hyperparameters = struct_pb2.Struct()
        hyperparameters.update(publication.hyperparameters)
        lineage.hyperparameters.CopyFrom(hyperparameters)
    published = client.push(
        kind,
        name,
        publication.folder,
        base_model=publication.base_model,
        description=publication.description,
        lineage=lineage,
        source=publication.source,
    )
    ref = version_ref(published)
    emit("published", output=ref, metrics=publication.metrics)
    return ref
