"""The computer's speakers, through PortAudio (sounddevice). Falls back to a silent sink, with a
one-line warning, when there is no PortAudio library or no output device."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from plugins.audio import PlaybackLog
from plugins.speakers_silent import SilentSpeakers
from runtime.events import AudioChunk, InputEvent, Sentence
from runtime.ports import Clock, OutputSink

log = logging.getLogger(__name__)

AHEAD = 0.12  # seconds of audio kept queued on the device so chunks join without gaps


class SoundDeviceSpeakers:
    """Implements the OutputSink port (pacing) on a PortAudio output stream."""

    def __init__(self, sd: Any, clock: Clock, device: str | int | None = None,
                 playback: PlaybackLog | None = None) -> None:
        self.sd = sd
        self.clock = clock
        self.device = device
        self.playback = playback
        self._stream: Any = None
        self._rate = 0
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._paused = False

    def _callback(self, outdata: Any, frames: int, time: Any, status: Any) -> None:
        want = frames * 2
        with self._lock:
            if self._paused:
                data = b""
            else:
                data = bytes(self._buf[:want])
                del self._buf[:want]
        outdata[: len(data)] = data
        if len(data) < want:
            outdata[len(data) :] = b"\0" * (want - len(data))

    def _queued(self) -> float:
        with self._lock:
            return len(self._buf) / 2 / self._rate if self._rate else 0.0

    async def _open(self, rate: int) -> None:
        if self._stream is not None and rate == self._rate:
            return
        await self.drain()
        self._close_stream()
        self._rate = rate
        self._stream = self.sd.RawOutputStream(
            samplerate=rate, channels=1, dtype="int16", device=self.device, callback=self._callback
        )
        self._stream.start()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        pass

    async def sentence(self, sentence: Sentence) -> None:
        pass

    async def play(self, chunk: AudioChunk) -> None:
        await self._open(chunk.rate)
        if self.playback is not None:
            self.playback.write(self.clock.now() + self._queued() + self._latency(), chunk.pcm, chunk.rate)
        with self._lock:
            self._buf += chunk.pcm
        while (ahead := self._queued()) > AHEAD or self._paused:
            await asyncio.sleep(min(ahead - AHEAD, 0.05) if ahead > AHEAD else 0.05)

    def _latency(self) -> float:
        return float(getattr(self._stream, "latency", 0.0) or 0.0) if self._stream is not None else 0.0

    def pause(self) -> None:
        with self._lock:
            self._paused = True
        if self.playback is not None:
            self.playback.cut(self.clock.now() + self._latency())

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            pending = bytes(self._buf)
        if self.playback is not None and pending:
            self.playback.write(self.clock.now() + self._latency(), pending, self._rate)

    def clear(self) -> int:
        with self._lock:
            unheard = len(self._buf) // 2
            self._buf.clear()
            self._paused = False
        if self.playback is not None:
            self.playback.cut(self.clock.now() + self._latency())
        return unheard

    async def drain(self) -> None:
        while (ahead := self._queued()) > 0 or self._paused:
            await asyncio.sleep(min(ahead, 0.05) if ahead else 0.05)
        await asyncio.sleep(self._latency())

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        pass

    async def aclose(self) -> None:
        self._close_stream()


def open_speakers(clock: Clock, device: str | int | None = None,
                  playback: PlaybackLog | None = None) -> OutputSink:
    """The speakers if PortAudio finds an output device, else a silent sink that keeps pace."""
    try:
        import sounddevice as sd  # raises OSError when the PortAudio library is missing

        sd.check_output_settings(device=device, channels=1, dtype="int16", samplerate=22050)
    except Exception as exc:  # noqa: BLE001 - any failure here means "no speakers"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("no audio output device (%s); speech will be silent", reason)
        return SilentSpeakers(clock, playback)
    return SoundDeviceSpeakers(sd, clock, device, playback)
