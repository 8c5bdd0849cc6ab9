"""The gateway's side of promoting an adapter version (`tuneplex adapters promote`): before an
alias moves, warm the candidate where the version it replaces is loaded, so the first requests
after the move do not wait for a pull and a load; after it, refresh what the resolver cached,
so the next request serves the new version even with a resolve TTL.

Both act on this gateway process only; several replicas each need the calls (or a TTL).
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.common.errors import InvalidArgument, TuneplexError, shown
from services.common.refs import is_version_number
from services.gateway.engines import EngineManager, EngineState
from services.gateway.protocol import RefreshResponse, WarmResponse
from services.gateway.residency import AdapterResidency
from services.gateway.resolver import ModelResolver
from services.gateway.served import AdapterVersion, ResolvedModel

log = logging.getLogger(__name__)


class PromotionSupport:
    def __init__(self, resolver: ModelResolver, residency: AdapterResidency,
                 engines: EngineManager):
        self._resolver = resolver
        self._residency = residency
        self._engines = engines

    async def warm(self, model: str, replaces: str) -> WarmResponse:
        """Load the pinned adapter version `model` into every ready engine that holds the
        version `replaces` names now. None holds it: nothing is loaded, and the answer says
        so (the first request after the move loads it, as for any cold version)."""
        start = time.perf_counter()
        candidate = await self._adapter(model, "model", pinned=True)
        holder = await self._adapter(replaces, "replaces", pinned=False)
        if holder.base != candidate.base:
            raise InvalidArgument(
                f"{candidate.version_ref} runs on {candidate.base.ref} but {shown(replaces)} "
                f"is {holder.version_ref} on {holder.base.ref}: a version can only replace one "
                "on the same base model", param="replaces", code="base_mismatch")
        new, old = _adapter_of(candidate), _adapter_of(holder)
        engines = [e for e in self._engines.for_base(candidate.base.name)
                   if e.state == EngineState.READY
                   and e.id in self._residency.engines_with(old.lora_id)]
        results = await asyncio.gather(
            *(self._residency.warm(e, new, replaces=old) for e in engines),
            return_exceptions=True)
        loaded_on: list[str] = []
        already_on: list[str] = []
        for engine, result in zip(engines, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, TuneplexError):
                    raise result
                # One engine's failure fails the warm: the caller learns it before the move.
                log.warning("engine %s: could not warm %s: %s", engine.id, new.ref, result)
                raise result
            (loaded_on if result else already_on).append(engine.id)
        seconds = round(time.perf_counter() - start, 3)
        if engines:
            message = (f"{new.ref} loaded on {len(loaded_on)} engine(s), already on "
                       f"{len(already_on)}, where {old.ref} ({shown(replaces)}) is loaded")
        else:
            message = (f"no ready engine has {old.ref} ({shown(replaces)}) loaded: nothing "
                       f"warmed; the first request for {new.ref} loads it")
        log.info("warm: %s", message)
        return WarmResponse(model=new.ref, loaded_on=loaded_on, already_on=already_on,
                            seconds=seconds, message=message)

    async def refresh(self, model: str) -> RefreshResponse:
        """Forget every cached ref of `model`'s adapter name, and resolve `model` again."""
        # Asked first: with the registry down (503) the cache is all requests have, keep it.
        resolved = await self._resolver.resolve(model, fresh=True)
        if resolved.adapter is not None:
            dropped = self._resolver.forget(resolved.adapter.name, keep=model)
            log.info("refresh: %s is %s; forgot %d other cached refs of %s", shown(model),
                     resolved.adapter.ref, dropped, resolved.adapter.name)
        return RefreshResponse(model=model, version=resolved.version_ref)

    async def _adapter(self, ref: str, param: str, *, pinned: bool) -> ResolvedModel:
        """Resolve `ref` (404 unknown, 503 registry down), refusing a base model, and for
        `pinned` anything but `name@version`: a warm must load exactly what gets promoted."""
        try:
            resolved = await self._resolver.resolve(ref, fresh=True)
        except TuneplexError as exc:
            if exc.param == "model":  # the resolver's words are about a request's `model`
                raise type(exc)(exc.message, param=param, code=exc.code) from None
            raise
        if resolved.adapter is None:
            raise InvalidArgument(
                f"{shown(ref)} is a base model: warm loads adapter versions (base models "
                f"are always loaded); give an adapter version such as `NAME@3`",
                param=param, code="not_an_adapter")
        if pinned and not is_version_number(ref.partition("@")[2]):
            raise InvalidArgument(
                f"{param} must be a pinned version (`name@version`), not {shown(ref)}: it "
                f"names {resolved.adapter.ref} now, which may change before the alias moves; "
                f"warm {resolved.adapter.ref}", param=param, code="version_not_pinned")
        return resolved


def _adapter_of(resolved: ResolvedModel) -> AdapterVersion:
    assert resolved.adapter is not None  # _adapter refused bases
    return resolved.adapter
