"""Piper: fast local neural voices. A voice is a local `NAME.onnx` with its `NAME.onnx.json`."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import onnxruntime
from huggingface_hub import hf_hub_download
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig

from plugins.audio import SynthesizerError, ThreadedVoice, chunk_bytes, rechunk
from runtime.events import AudioChunk, Sentence

VOICES_REPO = "rhasspy/piper-voices"
VOICE_NAME = re.compile(r"^(?P<lang>[a-z]{2,3})_(?P<region>[A-Z]{2})-(?P<name>\w+)-(?P<quality>x_low|low|medium|high)$")


def _voice_subpath(voice: str) -> str:
    m = VOICE_NAME.match(voice)
    if m is None:
        raise SynthesizerError(
            f"{voice!r} is neither a .onnx file nor a Piper voice name like en_US-lessac-medium")
    lang = m["lang"]
    return f"{lang}/{lang}_{m['region']}/{m['name']}/{m['quality']}/{voice}.onnx"


def piper_voice_path(voice: str, models_dir: Path) -> Path:
    """A local .onnx file as given, or where `omoide models pull` puts the named voice."""
    path = Path(voice).expanduser()
    if path.suffix == ".onnx" or path.exists():
        return path
    return models_dir / "piper" / _voice_subpath(voice)


def pull_piper_voice(voice: str, models_dir: Path) -> Path:
    """Download a Piper voice (.onnx and .onnx.json) from the Hugging Face Hub."""
    sub = _voice_subpath(voice)
    for name in (sub, sub + ".json"):
        hf_hub_download(VOICES_REPO, name, local_dir=models_dir / "piper")
    return models_dir / "piper" / sub


def load_voice(voice: Path, config: Path) -> PiperVoice:
    """PiperVoice.load, with onnxruntime's CPU memory arena off. The arena keeps the buffers of
    the longest sentence it has spoken and grows in doublings: one 220-character sentence left
    1.1 GB held for good, and a soak of the default configuration stepped up 800 MB in 25 minutes.
    Without it each sentence's buffers are freed (a 60-character sentence is about 7% slower to
    synthesize, a 220-character one 25%: still over ten times faster than it is spoken)."""
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    session = onnxruntime.InferenceSession(str(voice), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))))


class PiperSynthesizer:
    """Implements the Synthesizer port with piper-tts on a worker thread.

    Piper speaks a sentence per inference; its audio is cut into `chunk_ms` chunks for the sinks.
    """

    def __init__(self, voice: Path | str, speaker: int | None = None, length_scale: float | None = None,
                 chunk_ms: int = 100) -> None:
        voice = Path(voice).expanduser()
        config = voice.with_name(voice.name + ".json")
        if not voice.is_file() or not config.is_file():
            raise SynthesizerError(
                f"piper voice {voice} (and its {config.name}) not found; download one with"
                " `omoide models pull` (tts.piper.voice names a voice like en_US-lessac-medium)"
                " or point tts.piper.voice at a local .onnx file"
            )
        try:
            self.voice = load_voice(voice, config)
        except Exception as exc:  # noqa: BLE001 - a broken voice file is the user's to fix
            raise SynthesizerError(f"piper voice {voice} cannot be loaded: {exc}") from None
        self.config = SynthesisConfig(speaker_id=speaker, length_scale=length_scale)
        self.rate = int(self.voice.config.sample_rate)
        self.chunk_ms = chunk_ms
        self._worker = ThreadedVoice("piper")

    def _produce(self, text: str, stop: threading.Event) -> Iterator[tuple[bytes, int]]:
        size = chunk_bytes(self.rate, self.chunk_ms)
        for audio in self.voice.synthesize(text, self.config):
            for piece in rechunk(audio.audio_int16_bytes, size):
                yield piece, audio.sample_rate
            if stop.is_set():
                return

    def synthesize(self, sentence: Sentence) -> AsyncIterator[AudioChunk]:
        return self._worker.speak(sentence, lambda stop: self._produce(sentence.text, stop))
