"""What the gateway needs from the registry: the three reads it makes, as a Protocol.

`services.client.registry.AsyncRegistryClient` is the implementation; typing the gateway against
this Protocol keeps the test fakes honest (they must have these methods with these signatures)
and shows at a glance that the gateway never writes to the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from services.common.stubs import registry_pb2


@runtime_checkable
class RegistryReader(Protocol):
    async def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        """The immutable version `ref` (`name`, `name@3`, `name@alias`) names now."""
        ...

    async def list(self, kind: str | None = None) -> list[registry_pb2.Artifact]:
        """Every artifact of a kind, with its latest version."""
        ...

    async def pull(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        """Download a version's files into `dest` (sha256-checked as they stream)."""
        ...
