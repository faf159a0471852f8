"""A microphone that plays audio files as if they were being said live: for tests and demos.

Frames come at real-time pace on the injected clock. What the speakers play can be mixed in
(`echo`), delayed and scaled, to stand for the character's own voice reaching the microphone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
from faster_whisper.audio import decode_audio

from plugins.audio import MIC_RATE, PlaybackLog
from plugins.listening import MicrophoneError
from plugins.vad_silero import FRAME
from runtime.ports import Clock

FRAME_S = FRAME / MIC_RATE


class FileMicrophone:
    """Frames of 512 samples at 16 kHz: `lead_s` of silence, each file with `gap_s` of silence
    after it, then silence for `tail_s` (or for ever with `keep_open`)."""

    def __init__(self, paths: Sequence[Path | str], clock: Clock, *, lead_s: float = 0.5,
                 gap_s: float = 1.5, tail_s: float = 2.0, keep_open: bool = False,
                 echo: PlaybackLog | None = None, echo_gain: float = 0.8, echo_delay_s: float = 0.05,
                 noise: float = 0.0) -> None:
        self.clips: list[np.ndarray] = []
        for p in paths:
            path = Path(p).expanduser()
            if not path.is_file():
                raise MicrophoneError(f"microphone file {path} does not exist")
            try:
                self.clips.append(decode_audio(str(path), sampling_rate=MIC_RATE))
            except Exception as exc:  # noqa: BLE001 - not audio, or a broken file
                raise MicrophoneError(f"microphone file {path} is not audio this can read: {exc}") from None
        self.clock = clock
        self.lead_s, self.gap_s, self.tail_s, self.keep_open = lead_s, gap_s, tail_s, keep_open
        self.echo, self.echo_gain, self.echo_delay = echo, echo_gain, echo_delay_s
        self.noise = noise
        self.speech_starts: list[float] = []  # clock time at which each clip began to play
        self._rng = np.random.default_rng(0)

    def _timeline(self) -> list[tuple[np.ndarray | None, int]]:
        """(clip or None for silence, frames)."""
        parts: list[tuple[np.ndarray | None, int]] = [(None, int(self.lead_s / FRAME_S))]
        for clip in self.clips:
            parts.append((clip, -(-clip.size // FRAME)))
            parts.append((None, int(self.gap_s / FRAME_S)))
        parts.append((None, int(self.tail_s / FRAME_S)))
        return parts

    async def frames(self) -> AsyncIterator[tuple[float, np.ndarray]]:
        """(clock time of the frame's first sample, frame)."""
        t0 = self.clock.now()
        k = 0
        parts = self._timeline()
        i = 0
        while i < len(parts) or self.keep_open:
            clip, count = parts[i] if i < len(parts) else (None, 1)
            if clip is not None:
                self.speech_starts.append(t0 + k * FRAME_S)
                clip = np.concatenate([clip, np.zeros(count * FRAME - clip.size, dtype=np.float32)])
            for j in range(count):
                t = t0 + k * FRAME_S
                wait = t + FRAME_S - self.clock.now()  # a frame is there once it has been "recorded"
                if wait > 0:
                    await self.clock.sleep(wait)
                frame = clip[j * FRAME : (j + 1) * FRAME].copy() if clip is not None else np.zeros(FRAME, np.float32)
                if self.echo is not None:
                    frame += self.echo_gain * self.echo.read(t - self.echo_delay, FRAME)
                if self.noise:
                    frame += self._rng.normal(0, self.noise, FRAME).astype(np.float32)
                yield t, frame
                k += 1
            i += 1
