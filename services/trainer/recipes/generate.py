"""Answers generated in the worker with transformers: the eval loop's sampler for a model no
engine serves (an unpublished checkpoint, a model the gateway does not list, a GPU node with no
vLLM).

``LocalSampler`` loads the base model (and a PEFT adapter on it) once and answers the eval
loop's concurrent ``sample`` calls in micro-batches: calls that arrive together are padded on
the left (a decoder continues from the last position of every row) and generated in one
``generate`` call, run in a thread so the event loop keeps taking calls while it runs.
Greedy decoding when the temperature is 0, sampling with the seed otherwise. One batch holds
one set of sampling settings (they are ``generate`` arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from services.evaluation.sampling import SamplingConfig

# How long the first call of a batch waits for the others (they are issued together by the
# eval loop's workers, so a few milliseconds collect them).
GATHER_SECONDS = 0.02


class LocalSampler:
    """Chat answers from ``model_dir`` (+ ``adapter_dir``), ``batch_size`` prompts at a time."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.batch_size = max(1, batch_size)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # fp32 on the CPU: on CPUs without AVX512-BF16 bf16 matmuls are ~3x slower.
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir)
        self.model = model.to(self.device).eval()
        self._pending: list[tuple[list[dict[str, str]], SamplingConfig, asyncio.Future[str]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def sample(self, messages: list[dict[str, str]], sampling: SamplingConfig) -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._pending.append((messages, sampling, future))
        # One drainer per event loop at a time: each asyncio.run of the eval loop gets its own.
        if self._drainer is None or self._drainer.done() or self._drainer.get_loop() is not loop:
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(GATHER_SECONDS)
            sampling = self._pending[0][1]
            batch = [p for p in self._pending if p[1] == sampling][: self.batch_size]
            for entry in batch:
                self._pending.remove(entry)
            live = [p for p in batch if not p[2].done()]  # a cancelled caller needs no answer
            if not live:
                continue
            try:
                texts = await asyncio.to_thread(self.generate, [p[0] for p in live], sampling)
            except Exception as exc:  # noqa: BLE001 - the callers' items record it as their error
                for _, _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), text in zip(live, texts, strict=True):
                if not future.done():
                    future.set_result(text)

    def generate(
        self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig
    ) -> list[str]:
        """The answers to ``conversations`` (blocking; one ``generate`` call)."""
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        # The chat template already holds the special tokens.
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling.temperature == 0:
            # Greedy; the model's own generation_config may name a temperature: unset it.
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            output = self.model.generate(**encoded, **options)
        answers = output[:, encoded["input_ids"].shape[1] :]
        return list(self.tokenizer.batch_decode(answers, skip_special_tokens=True))

    def close(self) -> None:
        """Free the weights (a worker that evaluates several checkpoints loads one at a time)."""
        with contextlib.suppress(AttributeError):
            del self.model
        import gc

        gc.collect()
