"""ModelResolver: a request's `model` -> a served base model, or an adapter version on one.

Name resolution only: which bases this gateway serves (prepared once into verified local
folders), what the registry says a name means now (a pinned `name@7` is remembered a while, a
mutable `name`/`name@alias` for `resolve_ttl_s`), and whether vLLM can serve what it found.
Found-but-unservable (DoRA, modules_to_save, too high a rank, another base) is a 400 that says
how to serve it anyway; not found is a 404. Whether an adapter is loaded in an engine is
residency's business (residency.py), not this module's.

Fine-tuned models (`ft:<base>:<owner>:<suffix>:<o>[:ckpt-step-<N>]`, fine_tuning/names.py) name
the registry adapters `ft-<o>[-step-<N>]`. An adapter that carries an owner label is served to
that owner only: to anyone else it does not exist (404, as an unknown name).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import peft_types
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    shown,
)
from services.common.refs import is_version_number, version_number
from services.common.stubs import registry_pb2
from services.gateway.cache import VerifiedDiskCache, manifest_files
from services.gateway.fine_tuning import names as ft_names
from services.gateway.fine_tuning.owners import DEFAULT_OWNER
from services.gateway.registry_reader import RegistryReader
from services.gateway.served import AdapterVersion, ResolvedModel, ServedBase, export_hint
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# `name@7` never changes meaning, but it can be deleted: look again now and then.
_PINNED_VERSION_TTL_S = 60.0


@dataclass
class _Resolution:
    adapter: AdapterVersion
    at: float
    labels: dict[str, str]


class NeedsMerge(FailedPrecondition):
    """An adapter vLLM cannot load at runtime whose merged model it can serve (DoRA,
    modules_to_save, a rank above max_lora_rank); on_demand.py serves it so when enabled,
    otherwise the user reads the message (how to export it)."""

    def __init__(self, message: str, version: registry_pb2.ArtifactVersion):
        super().__init__(message, param="model", code="adapter_not_servable")
        self.version = version

    @property
    def ref(self) -> str:
        return f"{self.version.name}@{self.version.version}"


def visible_to(labels: dict[str, str] | Mapping[str, str], owner: str | None) -> bool:
    """Whether a caller of `owner` may see an adapter with `labels`: one without an owner label
    is everyone's; `owner` None is the gateway itself (no caller to check). The operator's key
    (owner `default`) sees every owner's adapters: the trainer's eval workers sample with it,
    a team's eval run of its own fine-tuned model among them. Teams never see each other's."""
    holder = labels.get(ft_names.OWNER_LABEL)
    return holder is None or owner in (None, DEFAULT_OWNER) or holder == owner


def listed_name(artifact: registry_pb2.Artifact) -> str:
    """The name an adapter is listed (and served) under: its `ft:` name when a fine-tuning job
    made it, else its registry name."""
    labels = artifact.latest.labels
    fine_tuned = labels.get(ft_names.FINE_TUNED_MODEL_LABEL)
    if not fine_tuned:
        return artifact.name
    step = labels.get(ft_names.CHECKPOINT_STEP_LABEL)
    return ft_names.checkpoint_model(fine_tuned, int(step)) if step else fine_tuned


def _is_pinned_version(ref: str) -> bool:
    return is_version_number(ref.partition("@")[2])


def check_version_selector(model: str) -> None:
    """A `model` of the form `name@<number>` must be a version the registry can hold: ASCII
    digits (`str.isdigit` also takes `²`, which int() refuses, and `١`, which it reads as 1)
    from 1 to 2**63-1. Anything else after `@` is an alias, for the registry to find or not."""
    selector = model.partition("@")[2]
    if not (is_version_number(selector) or selector.isnumeric()):
        return
    try:
        version_number(selector, param="model")
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid model {shown(model)}: {exc.message}", param="model",
                              code="invalid_version") from None


class ModelResolver:
    def __init__(self, settings: GatewaySettings, registry: RegistryReader,
                 cache: VerifiedDiskCache):
        self._settings = settings
        self._registry = registry
        self._cache = cache
        self.bases: dict[str, ServedBase] = {}
        self._resolved: dict[str, _Resolution] = {}

    # -- base models -------------------------------------------------------------------------

    async def prepare_bases(self) -> list[ServedBase]:
        """Turn each configured base into a local folder: a path as is, a registry ref pulled
        into the cache (sha256-verified, reused across restarts)."""
        for ref in self._settings.base_models:
            path = Path(ref).expanduser()
            if "/" in ref or path.is_dir():
                if not (path / "config.json").is_file():
                    raise FailedPrecondition(f"base model folder {path} has no config.json")
                base = ServedBase(name=path.name, path=path.resolve())
            else:
                version = await self._registry.resolve("model", ref)
                entry = await self._cache.local_copy(
                    self._registry, "model", f"{version.name}@{version.version}",
                    version.manifest.sha256, self.base_keys)
                base = ServedBase(version.name, entry.path, version.version, entry.key)
            self.bases[base.name] = base
        return list(self.bases.values())

    def base_keys(self) -> Collection[str]:
        """Cache keys of the served bases: the engines read them, so the cache keeps them."""
        return {b.cache_key for b in self.bases.values() if b.cache_key}

    def _base_named(self, model: str) -> ServedBase | None:
        if model in self.bases:
            return self.bases[model]
        name, _, version = model.partition("@")
        base = self.bases.get(name)
        return base if base is not None and version == str(base.version) else None

    # -- resolving ---------------------------------------------------------------------------

    async def resolve(self, model: str, *, fresh: bool = False,
                      owner: str | None = None) -> ResolvedModel:
        """What `model` names. `fresh`: ask the registry whatever is cached, and do not fall
        back on the cache when it is down (a promotion step must act on what is true now).
        `owner`: the caller's; an adapter another owner's label claims is not found."""
        if ft_names.is_fine_tuned(model):
            return await self._resolve_fine_tuned(model, fresh, owner)
        check_version_selector(model)
        base = self._base_named(model)
        if base is not None:
            return ResolvedModel(base)
        resolution = await self._resolve_adapter(
            model, fresh, admit=lambda labels: visible_to(labels, owner))
        return ResolvedModel(self._base_for(resolution.adapter), resolution.adapter)

    async def _resolve_fine_tuned(self, model: str, fresh: bool,
                                  owner: str | None) -> ResolvedModel:
        parsed = ft_names.parse_fine_tuned(model)
        if parsed is None:
            raise self._not_found(model)
        final_name = model if parsed.step is None else model.rpartition(":")[0]

        def admit(labels: Mapping[str, str]) -> bool:
            # The whole name must be the one the job gave it, not only its last part.
            return (labels.get(ft_names.FINE_TUNED_MODEL_LABEL) == final_name
                    and visible_to(labels, owner))

        try:
            resolution = await self._resolve_adapter(parsed.adapter, fresh, admit=admit)
        except NotFound:
            raise self._not_found(model) from None
        return ResolvedModel(self._base_for(resolution.adapter), resolution.adapter)

    def _not_found(self, ref: str) -> NotFound:
        return NotFound(
            f"The model '{ref}' does not exist: it is neither a served base model "
            f"({', '.join(sorted(self.bases))}) nor an adapter in the registry.",
            param="model", code="model_not_found",
        )

    def forget(self, name: str, keep: str | None = None) -> int:
        """Drop the cached resolution of every ref of adapter `name` (`name`, `name@3`,
        `name@prod`) but `keep`: an alias was moved, so the next request asks the registry.
        -> how many."""
        refs = [r for r in self._resolved if r != keep and r.partition("@")[0] == name]
        for ref in refs:
            del self._resolved[ref]
        return len(refs)

    async def _resolve_adapter(
        self, ref: str, fresh: bool = False, *,
        admit: Callable[[Mapping[str, str]], bool] = lambda labels: True,
    ) -> _Resolution:
        """`ref`'s adapter version; NotFound unless `admit` takes its labels (the caller's
        owner), and that before anything is said of whether it can be served, so another
        owner's adapter reads exactly as an unknown one."""
        ttl = _PINNED_VERSION_TTL_S if _is_pinned_version(ref) else self._settings.resolve_ttl_s
        cached = None if fresh else self._resolved.get(ref)
        now = time.monotonic()
        if cached is not None and now - cached.at < ttl:
            return self._admitted(ref, cached, admit)
        try:
            version = await self._registry.resolve("adapter", ref)
        except (NotFound, InvalidArgument):
            self._resolved.pop(ref, None)
            raise self._not_found(ref) from None
        except Unavailable:
            if cached is None:
                raise
            # Keep serving what the name meant a moment ago rather than failing every request.
            log.warning("registry unavailable; serving %s as %s", ref, cached.adapter.ref)
            return self._admitted(ref, cached, admit)
        if not admit(version.labels):
            raise self._not_found(ref)
        adapter = self._check_servable(ref, version)
        resolution = _Resolution(adapter, now, dict(version.labels))
        self._resolved[ref] = resolution
        return resolution

    def _admitted(self, ref: str, resolution: _Resolution,
                  admit: Callable[[Mapping[str, str]], bool]) -> _Resolution:
        if not admit(resolution.labels):
            raise self._not_found(ref)
        return resolution

    def _check_servable(self, ref: str, version: registry_pb2.ArtifactVersion) -> AdapterVersion:
        if version.WhichOneof("info") != "adapter":
            raise FailedPrecondition(f"'{ref}' is not an adapter", param="model")
        info = version.adapter
        exact = f"{version.name}@{version.version}"
        peft_type = (info.peft_type or "LORA").upper()
        if peft_type not in peft_types.ACCEPTED:
            raise FailedPrecondition(
                f"adapter {exact} is a {info.peft_type} adapter, which this gateway cannot serve",
                param="model", code="adapter_not_servable")
        problem = None
        if peft_type in peft_types.MERGED:
            problem = f"is a {peft_type} adapter, which vLLM cannot load at runtime"
        elif info.use_dora:
            problem = "uses DoRA, which vLLM cannot load as a runtime adapter"
        elif info.modules_to_save:
            problem = (f"trains full copies of {', '.join(info.modules_to_save)} "
                       "(modules_to_save), which vLLM cannot load as a runtime adapter")
        elif info.rank > self._settings.max_lora_rank:
            problem = (f"has rank {info.rank}, above this gateway's max_lora_rank "
                       f"{self._settings.max_lora_rank} (TUNEPLEX_GATEWAY_MAX_LORA_RANK)")
        if problem:
            # A merge turns it into plain weights: served that way when on-demand engines are on.
            raise NeedsMerge(f"adapter {exact} {problem}: {export_hint(exact)}.", version)
        broken = self._cache.unservable(version.manifest.sha256)
        if broken:  # its files could not be written here before: do not list or fetch it again
            raise FailedPrecondition(f"adapter {exact} cannot be served: {broken}",
                                     param="model", code="adapter_not_servable")
        return AdapterVersion(version.name, version.version, version.manifest.sha256,
                              info.base_model, manifest_files(version))

    def _base_for(self, adapter: AdapterVersion) -> ServedBase:
        for base in self.bases.values():
            if base.accepts(adapter.base_ref):
                return base
        served = ", ".join(b.ref for b in self.bases.values())
        raise FailedPrecondition(
            f"adapter {adapter.ref} was trained on {adapter.base_ref}, but this gateway serves "
            f"{served}: serve that base model, or {export_hint(adapter.ref)}.",
            param="model", code="adapter_base_mismatch",
        )

    async def servable_adapters(
        self, owner: str | None = None
    ) -> list[tuple[registry_pb2.Artifact, ServedBase]]:
        """Every adapter whose latest version this gateway can serve, with its base; with
        `owner`, only those that owner may see."""
        out = []
        for artifact in await self._registry.list("adapter"):
            if not visible_to(artifact.latest.labels, owner):
                continue
            try:
                adapter = self._check_servable(artifact.name, artifact.latest)
                out.append((artifact, self._base_for(adapter)))
            except FailedPrecondition:
                continue
        return out
