"""Ears: microphone frames → Silero VAD → faster-whisper, as a Source of inputs.

It yields SPEECH_STARTED as soon as speech is certain (for barge-in), a TRANSCRIPT when the
person has finished (after `end_of_speech_s` of silence), and SPEECH_ENDED after either.
At each pause (0.1 s of silence) (0.1 s of silence) the utterance so far is transcribed speculatively, while the
rest of the end-of-speech silence is waited out; if nothing more was said, that transcript is the
answer, and the time Whisper needs is hidden in the silence.

The character's own voice coming back into the microphone is recognised by the echo gate and
never starts anything. Known Whisper hallucinations ("Thank you for watching.") are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

import numpy as np
from faster_whisper import WhisperModel, download_model

from plugins.audio import MIC_RATE, EchoGate, dbfs
from plugins.listening import ListenerSettings, Microphone
from plugins.vad_silero import FRAME, SileroVad
from runtime.events import Control, EventMeta, InputEvent, InputKind, Priority
from runtime.ports import Clock

log = logging.getLogger(__name__)
FRAME_S = FRAME / MIC_RATE

# What Whisper says when it hears noise or nothing (a whole utterance equal to one of these).
HALLUCINATIONS = frozenset({
    "thank you for watching", "thanks for watching", "thank you so much for watching",
    "please subscribe", "subscribe to my channel", "like and subscribe",
    "please like and subscribe", "see you in the next video", "see you next time",
    "subtitles by the amara org community", "transcribed by", "thank you", "you", "bye",
    "so", "uh", "hmm",
})


def normalize_phrase(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def whisper_folder(model: str, models_dir: Path) -> Path:
    """Where a Whisper model is: the folder given, or where `omoide models pull` puts a size."""
    path = Path(model).expanduser()
    return path if path.is_dir() else models_dir / "whisper" / model.replace("/", "--")


def pull_whisper(model: str, models_dir: Path) -> Path:
    """Download a faster-whisper model (a size like base.en, or a hub id) into models_dir."""
    target = whisper_folder(model, models_dir)
    download_model(model, output_dir=str(target))
    return target


def load_whisper(model: str, models_dir: Path, device: str = "auto", compute_type: str = "int8",
                 threads: int = 0, download: bool = True) -> WhisperModel:
    """A faster-whisper model from disk, downloading it first when allowed and missing."""
    folder = whisper_folder(model, models_dir)
    if not (folder / "model.bin").is_file():
        if not download or Path(model).expanduser().is_dir():
            raise FileNotFoundError(f"no Whisper model in {folder}")
        pull_whisper(model, models_dir)
    return WhisperModel(str(folder), device=device, compute_type=compute_type, cpu_threads=threads)


@dataclass
class _Utterance:
    """One stretch of speech being heard."""

    active: bool = False
    audio: list[np.ndarray] = field(default_factory=list)
    onset: float = 0.0
    last_voice: float = 0.0  # clock time the last voiced frame ended
    voiced: int = 0  # frames up to the last voiced one
    silence: float = 0.0  # seconds of silence since then
    guess: asyncio.Task[str] | None = None  # a transcription started in a pause
    guess_covers: int = 0  # the frames it was started on

    def drop_guess(self) -> None:
        if self.guess is not None and not self.guess.done():
            self.guess.cancel()  # the thread finishes its pass; its text is not used
        self.guess = None


class WhisperListener:
    """Implements the Source port (and Controllable: mute, push-to-talk)."""

    name = "mic"

    def __init__(self, mic: Microphone, model: WhisperModel, clock: Clock,
                 settings: ListenerSettings = ListenerSettings(), echo_gate: EchoGate | None = None,
                 vad: SileroVad | None = None) -> None:
        self.mic = mic
        self.model = model
        self.clock = clock
        self.s = settings
        self.echo_gate = echo_gate
        self.vad = vad or SileroVad()
        self.muted = False
        self.talking = False  # push-to-talk held
        self.dropped: list[str] = []  # transcripts thrown away as hallucinations
        self.echo_frames = 0  # frames recognised as the character's own voice
        self._closed = False
        self._drop = HALLUCINATIONS | {normalize_phrase(p) for p in settings.drop_phrases}
        self._lock = asyncio.Lock()

    def control(self, command: str) -> bool:
        if command == Control.MUTE:
            self.muted = True
        elif command == Control.UNMUTE:
            self.muted = False
        elif command == Control.TALK_START:
            self.talking = True
        elif command == Control.TALK_STOP:
            self.talking = False
        else:
            return False
        log.info("microphone control", extra={"command": command})
        return True

    async def aclose(self) -> None:
        self._closed = True

    def _transcribe_sync(self, audio: np.ndarray) -> str:
        strict = self.s.strict_filters
        segments, _ = self.model.transcribe(
            audio, language=self.s.language, beam_size=self.s.beam_size, temperature=0.0, vad_filter=False,
            without_timestamps=True, condition_on_previous_text=False,
            no_speech_threshold=0.6 if strict else None, log_prob_threshold=-1.0 if strict else None,
            compression_ratio_threshold=2.4 if strict else None,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    async def _transcribe(self, frames: list[np.ndarray]) -> str:
        if not frames:
            return ""
        async with self._lock:
            return await asyncio.to_thread(self._transcribe_sync, np.concatenate(frames))

    def _keep(self, text: str) -> bool:
        phrase = normalize_phrase(text)
        if not phrase or not any(c.isalnum() for c in phrase):
            return False
        if phrase in self._drop:
            self.dropped.append(text)
            log.info("transcript dropped as a known hallucination", extra={"text": text})
            return False
        return True

    async def __aiter__(self) -> AsyncIterator[InputEvent]:  # type: ignore[override]  # noqa: C901 (the listening loop: VAD states, echo gate and barge-in)
        s = self.s
        pre_roll: collections.deque[np.ndarray] = collections.deque(maxlen=max(1, int(s.pre_roll_s / FRAME_S)))
        u = _Utterance()
        run = 0
        try:
            async for t, frame in self.mic.frames():
                if self._closed:
                    break
                open_ = not self.muted and (not s.push_to_talk or self.talking)
                if s.push_to_talk and self.talking and not u.active and not self.muted:
                    u = _Utterance(active=True, onset=t, last_voice=t)
                    yield self._event(InputKind.SPEECH_STARTED, "", t, onset=t, dbfs=round(dbfs(frame), 1))
                if not open_:
                    if u.active:  # released (or muted) mid-utterance
                        async for event in self._finish(u, t, keep=not self.muted):
                            yield event
                        u = _Utterance()
                    pre_roll.clear()
                    run = 0
                    continue
                p = self.vad(frame)
                if not u.active and self.echo_gate is not None and self.echo_gate.is_echo(frame, t):
                    self.echo_frames += 1
                    p = 0.0
                if not u.active:
                    pre_roll.append(frame)
                    run = run + 1 if p >= s.vad_threshold else 0
                    if run == 1:
                        onset = t
                    if run * FRAME_S >= s.onset_s:
                        u = _Utterance(active=True, audio=list(pre_roll), onset=onset, last_voice=t + FRAME_S)
                        level = dbfs(np.concatenate(u.audio[-run:]))
                        yield self._event(InputKind.SPEECH_STARTED, "", t, onset=onset, dbfs=round(level, 1))
                    continue
                u.audio.append(frame)
                u.silence = u.silence + FRAME_S if p < s.vad_threshold - 0.15 else 0.0
                if not u.silence:
                    u.last_voice = t + FRAME_S
                    u.voiced = len(u.audio)
                    u.drop_guess()  # they went on talking: a guess from the pause is out of date
                if s.push_to_talk:
                    continue
                if u.silence >= s.speculate_after_s and u.guess is None:
                    # they may have finished: transcribe now, while the silence is still being waited out
                    u.guess = asyncio.create_task(self._transcribe(list(u.audio)), name="stt-guess")
                    u.guess_covers = u.voiced
                if u.silence >= s.end_of_speech_s or len(u.audio) * FRAME_S >= s.max_utterance_s:
                    async for event in self._finish(u, u.last_voice, keep=True):
                        yield event
                    u, run = _Utterance(), 0
                    pre_roll.clear()
                    self.vad.reset()
        finally:
            u.drop_guess()

    async def _finish(self, u: _Utterance, ended: float, keep: bool) -> AsyncIterator[InputEvent]:
        """Transcribe the utterance; a transcript's time is when the person stopped talking, so a
        turn's timings count the wait for silence and the transcription too."""
        decided = self.clock.now()
        duration = max(0.0, ended - u.onset)  # voiced time, from onset to the last speech
        text = ""
        if keep and duration >= self.s.min_utterance_s:
            if u.guess is not None and u.guess_covers >= u.voiced:
                text = await u.guess  # nothing was said after the guess started: it is the answer
            else:
                u.drop_guess()
                text = await self._transcribe(u.audio)
        u.drop_guess()
        transcribed = keep and self._keep(text)
        if transcribed:
            yield self._event(InputKind.TRANSCRIPT, text, ended, onset=u.onset, duration_s=round(duration, 3),
                              decided_at=decided, transcribed_at=self.clock.now())
        yield self._event(InputKind.SPEECH_ENDED, "", self.clock.now(), transcribed=transcribed)

    def _event(self, kind: InputKind, text: str, at: float, **meta: Unpack[EventMeta]) -> InputEvent:
        priority = Priority.HIGH if kind is InputKind.TRANSCRIPT else Priority.CRITICAL
        author = self.s.author if kind is InputKind.TRANSCRIPT else None
        return InputEvent(kind, text, self.name, at, author, priority, meta=meta)
