"""A model with a stand-in: ask the primary (a model server); while it cannot answer, ask the
fallback (the local backend) so the character keeps talking. Layer 2: ports only."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from runtime.events import Prompt, PromptContext
from runtime.ports import ModelUnavailable, PersonaModel, Preparing


class FallbackModel:
    """Implements PersonaModel over two. A primary that raises ModelUnavailable before its first
    piece is skipped until its `retry_at`; meanwhile prompts are rendered by and sent to the
    fallback. `name` and `adapter` are the model that answered last."""

    def __init__(self, primary: PersonaModel, fallback: PersonaModel,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.fallback = fallback
        self.clock = clock
        self._retry_at: float | None = None
        self._serving: PersonaModel = primary
        self._fallback_prompts: list[Prompt] = []  # the last ones the fallback rendered itself

    @property
    def name(self) -> str:
        return self._serving.name

    @property
    def adapter(self) -> str | None:
        return self._serving.adapter

    @property
    def weights(self) -> str | None:
        """The folder of the adapter the model that answered last has live (AdapterView)."""
        return getattr(self._serving, "weights", None)

    @property
    def traits(self) -> Mapping[str, float]:
        return self._serving.traits

    # ---- a duo's view swaps her adapter into both (the app's followers target each one alone) ---
    def stage_adapter(self, path: Any, version: str | None) -> None:
        for backend in (self.primary, self.fallback):
            stage = getattr(backend, "stage_adapter", None)
            if stage is not None:
                stage(path, version)

    async def swap_when_free(self) -> float | None:
        """Both swap; the primary's time (None where it left the swap for its next generation)."""
        taken: list[float | None] = []
        for backend in (self.primary, self.fallback):
            swap = getattr(backend, "swap_when_free", None)
            taken.append(await swap() if swap is not None else None)
        return taken[0]

    def prepare(self, context: PromptContext) -> None:
        if isinstance(self._serving, Preparing):
            self._serving.prepare(context)

    def _primary_out(self) -> bool:
        return self._retry_at is not None and self.clock() < self._retry_at

    def render(self, context: PromptContext) -> Prompt:
        if not self._primary_out():
            return self.primary.render(context)
        prompt = self.fallback.render(context)
        self._fallback_prompts = [*self._fallback_prompts[-3:], prompt]
        return prompt

    async def _for_fallback(self, prompt: Prompt) -> Prompt:
        if any(p is prompt for p in self._fallback_prompts) or prompt.context is None:
            return prompt
        return await asyncio.to_thread(self.fallback.render, prompt.context)

    def _unavailable(self, exc: ModelUnavailable) -> None:
        self._retry_at = exc.retry_at if exc.retry_at is not None else self.clock()

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        if not self._primary_out():
            started = False
            try:
                async with contextlib.aclosing(self.primary.stream(prompt)) as pieces:
                    async for piece in pieces:
                        if not started:
                            started, self._serving, self._retry_at = True, self.primary, None
                        yield piece
                return
            except ModelUnavailable as exc:
                self._unavailable(exc)
                if started:  # cut off mid-reply: what was said stands; the next turn asks the fallback
                    raise
        self._serving = self.fallback
        async with contextlib.aclosing(self.fallback.stream(await self._for_fallback(prompt))) as pieces:
            async for piece in pieces:
                yield piece

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        if not self._primary_out():
            try:
                text = await self.primary.json(prompt, schema, max_new_tokens)
                self._serving, self._retry_at = self.primary, None
                return text
            except ModelUnavailable as exc:
                self._unavailable(exc)
        self._serving = self.fallback
        return await self.fallback.json(await self._for_fallback(prompt), schema, max_new_tokens)

    async def aclose(self) -> None:
        try:
            await self.primary.aclose()
        finally:
            await self.fallback.aclose()
