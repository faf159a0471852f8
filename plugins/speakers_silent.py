"""A sink that plays nothing but keeps real-time pace, so a turn takes as long as its speech.

Used when there is no audio device, and by tests on a fast clock. It writes what it "plays" to the
playback log, so a file-backed microphone can hear the character's own voice as a real one would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from plugins.audio import PlaybackLog
from runtime.events import AudioChunk, InputEvent, Sentence
from runtime.ports import Clock

STEP = 0.02  # seconds of clock time between looks at pause/clear while a chunk plays


class SilentSpeakers:
    """Implements the OutputSink port (pacing) without a sound device."""

    def __init__(self, clock: Clock, playback: PlaybackLog | None = None) -> None:
        self.clock = clock
        self.playback = playback
        self._until = 0.0  # clock time when everything handed over will have been "heard"
        self._rate = 0
        self._paused_at: float | None = None
        self._running = asyncio.Event()
        self._running.set()
        self._current: tuple[AudioChunk, float] | None = None  # the chunk playing, and its start

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        self._until = self.clock.now()

    async def sentence(self, sentence: Sentence) -> None:
        pass

    async def play(self, chunk: AudioChunk) -> None:
        await self._running.wait()
        now = self.clock.now()
        start = max(self._until, now)
        self._until = start + chunk.duration
        self._rate = chunk.rate
        self._current = (chunk, start)
        if self.playback is not None:
            self.playback.write(start, chunk.pcm, chunk.rate)
        while (left := self._until - self.clock.now()) > 0:
            if self._paused_at is not None:
                await self._running.wait()
                continue
            await self.clock.sleep(min(left, STEP))

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.clock.now()
            self._running.clear()
            if self.playback is not None:
                self.playback.cut(self._paused_at)

    def resume(self) -> None:
        if self._paused_at is None:
            return
        now = self.clock.now()
        held = now - self._paused_at
        if self._current is not None and self.playback is not None:
            # what was left of the chunk in flight plays from now on
            chunk, start = self._current
            done = max(0, int((self._paused_at - start) * chunk.rate)) * 2
            if done < len(chunk.pcm):
                self.playback.write(now, chunk.pcm[done:], chunk.rate)
            self._current = (chunk, start + held)
        self._until += held
        self._paused_at = None
        self._running.set()

    def clear(self) -> int:
        now = self.clock.now() if self._paused_at is None else self._paused_at
        unheard = max(0.0, self._until - now)
        if self.playback is not None:
            self.playback.cut(now)
        self._until = self.clock.now()
        self._paused_at = None
        self._current = None
        self._running.set()
        return int(unheard * self._rate)

    async def drain(self) -> None:
        while (left := self._until - self.clock.now()) > 0:
            if self._paused_at is not None:
                await self._running.wait()
                continue
            await self.clock.sleep(min(left, STEP))

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        pass

    async def aclose(self) -> None:
        pass
