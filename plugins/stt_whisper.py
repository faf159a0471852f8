"""Ears: microphone frames → Silero VAD → faster-whisper, as a Source of inputs.

It yields SPEECH_STARTED as soon as speech is certain (for barge-in), a TRANSCRIPT when the
person has finished (after `end_of_speech_s` of silence), and SPEECH_ENDED after either. Long
utterances are transcribed while the person is still talking: at each short pause the audio so
far is transcribed in the background, so at the end only the last stretch is left to do.

The character's own voice coming back into the microphone is recognised by the echo gate and
never starts anything. Known Whisper hallucinations ("Thank you for watching.") are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from faster_whisper import WhisperModel, download_model

from plugins.audio import MIC_RATE, EchoGate, dbfs
from plugins.vad_silero import FRAME, SileroVad
from runtime.events import Control, InputEvent, InputKind, Priority
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


class Microphone(Protocol):
    def frames(self) -> AsyncIterator[tuple[float, np.ndarray]]: ...


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    author: str = "you"
    language: str | None = "en"
    vad_threshold: float = 0.5
    onset_s: float = 0.096  # this much speech (3 frames) before it counts
    end_of_speech_s: float = 0.4
    min_utterance_s: float = 0.25  # shorter speech is a cough, not words
    max_utterance_s: float = 30.0
    commit_after_s: float = 2.0  # transcribe the part before a pause once it is this long
    commit_pause_s: float = 0.2
    pre_roll_s: float = 0.2  # audio kept from before the onset
    push_to_talk: bool = False
    strict_filters: bool = True  # Whisper's no-speech / log-prob / compression checks
    beam_size: int = 1  # 1 is greedy: fastest
    drop_phrases: tuple[str, ...] = ()


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

    async def __aiter__(self) -> AsyncIterator[InputEvent]:  # type: ignore[override]
        s = self.s
        pre_roll: collections.deque[np.ndarray] = collections.deque(maxlen=max(1, int(s.pre_roll_s / FRAME_S)))
        audio: list[np.ndarray] = []
        speaking, run, silence, committed = False, 0, 0.0, 0
        onset = last_voice = 0.0
        pending: asyncio.Task[str] | None = None
        try:
            async for t, frame in self.mic.frames():
                if self._closed:
                    break
                open_ = not self.muted and (not s.push_to_talk or self.talking)
                if s.push_to_talk and self.talking and not speaking and not self.muted:
                    speaking, onset, audio, committed, silence = True, t, [], 0, 0.0
                    yield self._event(InputKind.SPEECH_STARTED, "", t, onset=t, dbfs=dbfs(frame))
                if not open_:
                    if speaking:  # released (or muted) mid-utterance
                        keep = not self.muted
                        async for event in self._finish(audio, committed, pending, onset, t, keep):
                            yield event
                        speaking, pending, audio = False, None, []
                    pre_roll.clear()
                    run = 0
                    continue
                p = self.vad(frame)
                if not speaking and self.echo_gate is not None and self.echo_gate.is_echo(frame, t):
                    self.echo_frames += 1
                    p = 0.0
                if not speaking:
                    pre_roll.append(frame)
                    run = run + 1 if p >= s.vad_threshold else 0
                    if run == 1:
                        onset = t
                    if run * FRAME_S >= s.onset_s:
                        speaking, audio, committed, silence = True, list(pre_roll), 0, 0.0
                        last_voice = t + FRAME_S
                        level = dbfs(np.concatenate(audio[-run:]))
                        yield self._event(InputKind.SPEECH_STARTED, "", t, onset=onset, dbfs=round(level, 1))
                    continue
                audio.append(frame)
                silence = silence + FRAME_S if p < s.vad_threshold - 0.15 else 0.0
                if not silence:
                    last_voice = t + FRAME_S
                uncommitted = (len(audio) - committed) * FRAME_S
                if (silence >= s.commit_pause_s and uncommitted >= s.commit_after_s and pending is None
                        and not s.push_to_talk):
                    pending = asyncio.create_task(self._transcribe(audio[committed:]), name="stt-commit")
                    committed = len(audio)
                ended = silence >= s.end_of_speech_s and not s.push_to_talk
                if ended or len(audio) * FRAME_S >= s.max_utterance_s:
                    async for event in self._finish(audio, committed, pending, onset, last_voice, True):
                        yield event
                    speaking, pending, audio, run = False, None, [], 0
                    pre_roll.clear()
                    self.vad.reset()
        finally:
            if pending is not None:
                pending.cancel()

    async def _finish(self, audio: list[np.ndarray], committed: int, pending: asyncio.Task[str] | None,
                      onset: float, ended: float, keep: bool) -> AsyncIterator[InputEvent]:
        """Transcribe what is left; a transcript's time is when the person stopped talking, so a
        turn's timings count the wait for silence and the transcription too."""
        texts = [await pending] if pending is not None else []
        duration = max(0.0, ended - onset)  # voiced time, from onset to the last speech
        if keep and duration >= self.s.min_utterance_s:
            texts.append(await self._transcribe(audio[committed:]))
        text = " ".join(x for x in texts if x).strip()
        transcribed = keep and self._keep(text)
        if transcribed:
            yield self._event(InputKind.TRANSCRIPT, text, ended, onset=onset, duration_s=round(duration, 3),
                              transcribed_at=self.clock.now())
        yield self._event(InputKind.SPEECH_ENDED, "", self.clock.now(), transcribed=transcribed)

    def _event(self, kind: InputKind, text: str, at: float, **meta: Any) -> InputEvent:
        priority = Priority.HIGH if kind is InputKind.TRANSCRIPT else Priority.CRITICAL
        author = self.s.author if kind is InputKind.TRANSCRIPT else None
        return InputEvent(kind, text, self.name, at, author, priority, meta=meta)
