"""Fakes that implement the ports, for tests that need a scripted reply."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from runtime.events import ChatMessage, Prompt, PromptContext, input_text


class ScriptedModel:
    """A PersonaModel that always says `text`, word by word, `delay` seconds apart (real time)."""

    name = "scripted"
    adapter = None
    traits: dict[str, float] = {}

    def __init__(self, text: str, delay: float = 0.002) -> None:
        self.text = text
        self.delay = delay
        self.closed_early = False

    def render(self, context: PromptContext) -> Prompt:
        msgs = (ChatMessage("system", f"You are {context.persona.name}."), *context.history,
                ChatMessage("user", input_text(context.inputs)))
        text = "\n".join(f"{m.role}: {m.content}" for m in msgs)
        return Prompt(text, tuple(msgs), len(text.split()))

    async def aclose(self) -> None:
        pass

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        finished = False
        try:
            for piece in re.findall(r"\S+\s*", self.text):
                await asyncio.sleep(self.delay)
                yield piece
            finished = True
        finally:
            self.closed_early = not finished
