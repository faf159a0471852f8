"""A sink that plays nothing but keeps real-time pace, so a turn takes as long as its speech.

Used when there is no audio device, and by tests on a fast clock.
"""

from __future__ import annotations

from runtime.events import AudioChunk, InputEvent, Sentence
from runtime.ports import Clock


class SilentSpeakers:
    """Implements the OutputSink port (pacing) without a sound device."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._until = 0.0  # clock time when everything handed over will have been "heard"
        self._rate = 0
        self.played_samples = 0

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        self._until = self.clock.now()

    async def sentence(self, sentence: Sentence) -> None:
        pass

    async def play(self, chunk: AudioChunk) -> None:
        now = self.clock.now()
        self._until = max(self._until, now) + chunk.duration
        self._rate = chunk.rate
        self.played_samples += chunk.samples
        await self.clock.sleep(self._until - now)

    def clear(self) -> int:
        now = self.clock.now()
        unheard = max(0.0, self._until - now)
        self._until = now
        samples = int(unheard * self._rate)
        self.played_samples -= samples
        return samples

    async def drain(self) -> None:
        await self.clock.sleep(max(0.0, self._until - self.clock.now()))

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str) -> None:
        pass

    async def aclose(self) -> None:
        pass
