"""What the gateway serves: base models on engines, and adapter versions on top of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServedBase:
    """A base model an engine serves, under `name` (vLLM's --served-model-name)."""

    name: str
    path: Path
    version: int | None = None  # registry version; None for a local folder
    cache_key: str | None = None

    def accepts(self, base_ref: str) -> bool:
        """Whether an adapter trained on `base_ref` (`name@version`) runs on this base."""
        name, _, version = base_ref.partition("@")
        if name != self.name:
            return False
        return self.version is None or not version or version == str(self.version)

    @property
    def ref(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class AdapterVersion:
    """One immutable adapter version, as resolved from the registry."""

    name: str
    version: int
    cache_key: str  # manifest sha256
    base_ref: str
    files: list[dict[str, Any]] = field(default_factory=list, compare=False, hash=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def lora_id(self) -> str:
        """vLLM's name for it: the version and content hash, so a new version or a re-push
        never collides with what an engine already has under the same user-facing name."""
        return f"{self.name}@v{self.version}-{self.cache_key[:8]}"


def export_hint(ref: str) -> str:
    """How to serve anyway an adapter version that vLLM cannot load at runtime."""
    return (f"export a merged model instead (`tuneplex export {ref} --name NEW-NAME`) and "
            "serve it as a base model (TUNEPLEX_GATEWAY_BASE_MODELS)")


@dataclass(frozen=True)
class ResolvedModel:
    """What a request's `model` names: a base model, or an adapter on one."""

    base: ServedBase
    adapter: AdapterVersion | None = None

    @property
    def upstream_name(self) -> str:
        return self.adapter.lora_id if self.adapter else self.base.name

    @property
    def public_name(self) -> str:
        """The `model` a response carries: an exact, re-usable ref (`sql-lora@2`)."""
        return self.adapter.ref if self.adapter else self.base.name

    @property
    def version_ref(self) -> str:
        """The immutable version that serves it (header `x-tuneplex-model-version`):
        `sql-lora@3`, or the base's registry ref `smollm2-135m-instruct@1` (its name when
        it is a local folder)."""
        return self.adapter.ref if self.adapter else self.base.ref
