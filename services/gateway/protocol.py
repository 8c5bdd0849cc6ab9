"""Wire models of the requests the gateway validates before proxying.

Deliberately permissive (extra fields allowed and passed through untouched) so new OpenAI and
vLLM parameters keep working; only what the gateway relies on, or what would otherwise reach the
engine as nonsense, is checked here. The engine validates the rest and its 400s pass through.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_EXAMPLE_MODEL = "smollm2-135m-instruct"


class _Open(BaseModel):
    # Strict where OpenAI is: `"max_tokens": "10"` or `"stream": "yes"` is a 400 there, and
    # coercing it here would accept what the SDKs and the engine do not (an int still passes
    # for a float, as in JSON).
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class _Sampling(_Open):
    model: str = Field(min_length=1, max_length=256, examples=[_EXAMPLE_MODEL],
                       description="A base model, an adapter name, `name@version` or an alias.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        min_length=1, examples=["The capital of France is"])
    echo: bool = False


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneplex"
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    # Set (and the `x-tuneplex-degraded` header) when the list is partial: the registry is out.
    degraded: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- promotion (/tuneplex/v1): ours, not OpenAI's, so strict: an unknown field is a typo ------

class _Admin(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class WarmRequest(_Admin):
    model: str = Field(min_length=1, max_length=256, examples=["sql-lora@4"],
                       description="The pinned adapter version to load: `name@version`.")
    replaces: str = Field(min_length=1, max_length=256, examples=["sql-lora@prod"],
                          description="What it is about to replace (an alias, usually): the "
                          "engines that hold the version this names now get the new one.")


class WarmResponse(BaseModel):
    model: str
    loaded_on: list[str] = Field(description="Engines it was loaded into now.")
    already_on: list[str] = Field(description="Engines that had it already.")
    seconds: float
    message: str = Field(description="What happened, in words (also when nothing was loaded).")


class RefreshRequest(_Admin):
    model: str = Field(min_length=1, max_length=256, examples=["sql-lora@prod"],
                       description="A model ref; every cached ref of its name is forgotten.")


class RefreshResponse(BaseModel):
    model: str
    version: str = Field(description="What `model` names now: `name@version`.")
