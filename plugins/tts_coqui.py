"""Coqui TTS (the `coqui-tts` package), e.g. XTTS v2 voice cloning. An optional extra: it is
imported only when configured, and says what to install when it cannot load."""

from __future__ import annotations

import importlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from plugins.audio import SynthesizerError, ThreadedVoice, chunk_bytes, rechunk
from runtime.events import AudioChunk, Sentence

INSTALL_HINT = (
    "install the optional extra with `pip install 'omoide[coqui]'`. coqui-tts needs torchaudio built"
    " for the same torch; with torch 2.13 no such torchaudio is published, so run it in an"
    " environment with torch 2.9.1 and torchaudio 2.9.1 (see docs/voice.md)"
)


class CoquiSynthesizer:
    """Implements the Synthesizer port with Coqui TTS on a worker thread."""

    def __init__(self, model: str, speaker_wav: str = "", language: str = "en", device: str = "cpu",
                 chunk_ms: int = 100) -> None:
        try:
            api: Any = importlib.import_module("TTS.api")  # optional: only when configured
        except Exception as exc:  # noqa: BLE001 - ImportError, OSError from torchaudio, ...
            raise SynthesizerError(f"Coqui TTS cannot be loaded ({type(exc).__name__}: {exc}); {INSTALL_HINT}") from None
        if speaker_wav and not Path(speaker_wav).expanduser().is_file():
            raise SynthesizerError(f"tts.coqui.speaker_wav {speaker_wav} does not exist")
        self.tts = api.TTS(model).to(device)
        self.speaker_wav = str(Path(speaker_wav).expanduser()) if speaker_wav else None
        self.language = language
        self.rate = int(self.tts.synthesizer.output_sample_rate)
        self.chunk_ms = chunk_ms
        self._worker = ThreadedVoice("coqui")

    def _produce(self, text: str, stop: threading.Event) -> Iterator[tuple[bytes, int]]:
        kwargs: dict[str, Any] = {"text": text}
        if self.speaker_wav:
            kwargs.update(speaker_wav=self.speaker_wav, language=self.language)
        wav = np.clip(np.asarray(self.tts.tts(**kwargs), dtype=np.float32), -1.0, 1.0)
        pcm = (wav * 32767).astype("<i2").tobytes()
        yield from ((piece, self.rate) for piece in rechunk(pcm, chunk_bytes(self.rate, self.chunk_ms)))

    def synthesize(self, sentence: Sentence) -> AsyncIterator[AudioChunk]:
        return self._worker.speak(sentence, lambda stop: self._produce(sentence.text, stop))
