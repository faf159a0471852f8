"""What the character listens with: the microphone contract, its error, and how speech is heard
(the listener's settings; [stt] in config.toml takes its defaults from here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class MicrophoneError(RuntimeError):
    """The microphone cannot be opened or read (no device, a file that is not audio)."""


class Microphone(Protocol):
    """16 kHz mono float32 frames of 512 samples, each with the monotonic time it was captured."""

    def frames(self) -> AsyncIterator[tuple[float, np.ndarray]]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerSettings:
    """How speech becomes a transcript: voice activity, when an utterance ends, Whisper's decoding."""

    author: str = "you"
    language: str | None = "en"
    vad_threshold: float = 0.5
    onset_s: float = 0.096  # this much speech (3 frames) before it counts
    end_of_speech_s: float = 0.4
    min_utterance_s: float = 0.25  # shorter speech is a cough, not words
    max_utterance_s: float = 30.0
    speculate_after_s: float = 0.1  # silence after which a transcript is guessed ahead of the end
    pre_roll_s: float = 0.2  # audio kept from before the onset
    push_to_talk: bool = False
    strict_filters: bool = True  # Whisper's no-speech / log-prob / compression checks
    beam_size: int = 1  # 1 is greedy: fastest
    drop_phrases: tuple[str, ...] = ()
