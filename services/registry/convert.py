"""Metadata rows to wire messages, and the canonical manifest digest."""

from __future__ import annotations

import hashlib
import json

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.stubs import registry_pb2
from services.registry.metadata import ArtifactRow, FileRow, VersionRow
from services.registry.names import KINDS


def manifest_json(files: list[FileRow]) -> bytes:
    """Canonical JSON of a version's files: sorted keys, no spaces, in upload order. Its
    sha256 is the manifest digest, one value that pins every byte of the version."""
    entries = [{"path": f.path, "sha256": f.sha256, "size_bytes": f.size} for f in files]
    return json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()


def manifest_sha256(files: list[FileRow]) -> str:
    return hashlib.sha256(manifest_json(files)).hexdigest()


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def info_to_json(info) -> str:
    """Kind-specific facts as ``{"adapter": {...}}`` (readable in the database)."""
    field = {
        registry_pb2.AdapterInfo: "adapter",
        registry_pb2.DatasetInfo: "dataset",
        registry_pb2.ModelInfo: "model",
        registry_pb2.EvaluationInfo: "evaluation",
        registry_pb2.EvalDefinitionInfo: "eval_definition",
    }[type(info)]
    return json.dumps({field: json_format.MessageToDict(info)}, sort_keys=True)


def lineage_to_json(lineage: registry_pb2.Lineage) -> str:
    return json_format.MessageToJson(lineage, sort_keys=True, indent=None)


def version_to_proto(row: VersionRow) -> registry_pb2.ArtifactVersion:
    version = registry_pb2.ArtifactVersion(
        kind=KINDS[row.kind],
        name=row.name,
        version=row.version,
        manifest=registry_pb2.Manifest(
            files=[
                registry_pb2.FileEntry(path=f.path, size_bytes=f.size, sha256=f.sha256)
                for f in row.files
            ],
            total_size_bytes=row.total_size,
            sha256=row.manifest_sha256,
        ),
        create_time=timestamp(row.create_time),
        description=row.description,
        aliases=row.aliases,
        labels=row.labels,
    )
    json_format.Parse(row.lineage_json, version.lineage)
    for field, value in json.loads(row.info_json).items():
        getattr(version, field).SetInParent()  # an all-default info still says its kind
        json_format.ParseDict(value, getattr(version, field))
    return version


def artifact_to_proto(row: ArtifactRow, latest: VersionRow | None) -> registry_pb2.Artifact:
    artifact = registry_pb2.Artifact(
        kind=KINDS[row.kind],
        name=row.name,
        latest_version=row.latest_version,
        aliases=row.aliases,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
    )
    if latest is not None:
        artifact.latest.CopyFrom(version_to_proto(latest))
    return artifact
