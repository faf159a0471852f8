"""A voice with a fallback: when the chosen engine fails on a sentence, that sentence is spoken by
the fallback (espeak-ng), and the next sentence tries the chosen engine again."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from runtime.events import AudioChunk, Sentence
from runtime.ports import Synthesizer

log = logging.getLogger(__name__)


class FallbackSynthesizer:
    """Implements the Synthesizer port over two others."""

    def __init__(self, primary: Synthesizer, fallback: Synthesizer, name: str = "primary") -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = name
        self.failures = 0

    async def synthesize(self, sentence: Sentence) -> AsyncIterator[AudioChunk]:
        index = 0
        try:
            async for chunk in self.primary.synthesize(sentence):
                yield chunk
                index += 1
            return
        except Exception as exc:  # noqa: BLE001 - any engine failure falls back
            self.failures += 1
            log.warning("voice failed on a sentence; speaking it with the fallback voice",
                        extra={"engine": self.name, "error": f"{type(exc).__name__}: {exc}",
                               "turn_id": sentence.turn_id, "seq": sentence.seq, "chunks_done": index})
            if index:
                return  # part of it was heard already: go on with the next sentence
        async for chunk in self.fallback.synthesize(sentence):
            yield chunk
