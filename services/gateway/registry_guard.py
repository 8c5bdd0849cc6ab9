"""The registry as the gateway's users may see it fail: in our words, details in the log.

The registry client's errors carry what gRPC says (`failed to connect to all addresses;
ipv4:127.0.0.1:50051`) and what the registry says about its storage (blob keys of a checksum
mismatch). Those are for operators. A user is told which kind of failure it is (the registry
is out: retry; a stored version is damaged: it cannot be served) and the rest goes to the log.
Errors that are about the user's request (not found, invalid) pass through as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.common.errors import DataLoss, DeadlineExceeded, Internal, Unavailable
from services.common.stubs import registry_pb2
from services.gateway.registry_reader import RegistryReader

log = logging.getLogger(__name__)

REGISTRY_DOWN = "the model registry is unavailable; retry shortly"


class GuardedRegistry:
    """A RegistryReader over another one that keeps internals out of its errors."""

    def __init__(self, registry: RegistryReader):
        self._registry = registry

    async def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        try:
            return await self._registry.resolve(kind, ref)
        except (Unavailable, DeadlineExceeded, Internal) as exc:
            raise _outage("resolve", ref, exc) from None

    async def list(self, kind: str | None = None) -> list[registry_pb2.Artifact]:
        try:
            return await self._registry.list(kind)
        except (Unavailable, DeadlineExceeded, Internal) as exc:
            raise _outage("list", kind or "all", exc) from None

    async def pull(self, kind: str, ref: str, dest: Path) -> registry_pb2.ArtifactVersion:
        try:
            return await self._registry.pull(kind, ref, dest)
        except (Unavailable, DeadlineExceeded, Internal) as exc:
            raise _outage("pull", ref, exc) from None
        except DataLoss as exc:
            log.error("registry: %s failed its checksum while downloading: %s", ref, exc.message)
            raise DataLoss(f"the stored files of {ref} do not match their checksums, so it "
                           "cannot be served; push it again", param="model",
                           code="artifact_damaged") from None


def _outage(call: str, ref: str, exc: Exception) -> Unavailable:
    log.warning("registry %s %s failed: %s", call, ref, exc)
    return Unavailable(REGISTRY_DOWN, code="registry_unavailable")
