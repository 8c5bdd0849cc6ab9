"""How an answer is produced: the sampling settings, the ``Sampler`` protocol the eval loop calls
and the gateway-backed sampler (the same class answers a ``score_model`` grader's judge).

Sampling is declared apart from the data and the graders so one eval set can be re-scored by
other graders, or sampled with other settings, without touching the rest.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field

# Bounds of the sampling settings (OpenAI's ranges; a seed as the training spec's).
MAX_TEMPERATURE = 2.0
MAX_TOKENS = 32768
MAX_SEED = 2**32


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0.0, le=MAX_TEMPERATURE)
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 42


class Sampler(Protocol):
    async def sample(self, messages: list[dict[str, str]], sampling: SamplingConfig) -> str: ...


def _api_base(url: str) -> str:
    # Settings name the gateway's root (http://host:8000); the OpenAI client wants its /v1.
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


class GatewaySampler:
    """Chat completions through the tuneplex gateway (or any OpenAI-compatible server).

    openai's own retries (``max_retries``) ride out 429/503 while the gateway loads an adapter
    or an engine is busy; what still fails reaches the eval loop as that item's error.
    """

    def __init__(
        self, base_url: str, api_key: str | None, model: str, timeout: float = 300.0
    ) -> None:
        # Imported here: openai takes seconds to import, and graders, admission and the registry
        # use this module for SamplingConfig alone.
        from openai import AsyncOpenAI

        self.model = model
        # The client insists on a key; a gateway without auth ignores whatever is sent.
        self._client = AsyncOpenAI(
            base_url=_api_base(base_url),
            api_key=api_key or "no-key",
            timeout=timeout,
            max_retries=5,
        )

    async def sample(self, messages: list[dict[str, str]], sampling: SamplingConfig) -> str:
        return await self.complete(self.model, messages, sampling)

    async def complete(
        self, model: str, messages: list[dict[str, str]], sampling: SamplingConfig
    ) -> str:
        response = await self._client.chat.completions.create(
            model=model,
            messages=cast(Any, messages),
            temperature=sampling.temperature,
            max_tokens=sampling.max_tokens,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

    async def aclose(self) -> None:
        await self._client.close()
