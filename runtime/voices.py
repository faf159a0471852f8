"""A voice with a fallback: when the chosen engine fails or stalls on a sentence, that sentence is
spoken by the fallback (espeak-ng), and the next sentence tries the chosen engine again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from runtime.events import AudioChunk, Sentence
from runtime.ports import Synthesizer

log = logging.getLogger(__name__)


class FallbackSynthesizer:
    """Implements the Synthesizer port over two others."""

    def __init__(self, primary: Synthesizer, fallback: Synthesizer, name: str = "primary",
                 stall_s: float = 7.5) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = name
        self.stall_s = stall_s  # no audio from the primary for this long counts as a failure
        self.failures = 0

    async def synthesize(self, sentence: Sentence) -> AsyncIterator[AudioChunk]:
        index = 0
        voice = self.primary.synthesize(sentence)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.stall_s):
                        chunk = await anext(voice, None)
                except TimeoutError:
                    raise TimeoutError(f"no audio for {self.stall_s:g} s") from None
                if chunk is None:
                    return
                yield chunk
                index += 1
        except Exception as exc:  # noqa: BLE001 - any engine failure falls back
            self.failures += 1
            log.warning("voice failed on a sentence; speaking it with the fallback voice",
                        extra={"engine": self.name, "error": f"{type(exc).__name__}: {exc}",
                               "turn_id": sentence.turn_id, "seq": sentence.seq, "chunks_done": index})
            if index:
                return  # part of it was heard already: go on with the next sentence
        finally:
            if (aclose := getattr(voice, "aclose", None)) is not None:
                await aclose()
        async for chunk in self.fallback.synthesize(sentence):
            yield chunk
