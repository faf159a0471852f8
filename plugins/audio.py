"""Audio helpers shared by the synthesizers and sinks: chunking, volume envelopes, WAV."""

from __future__ import annotations

import io
import threading
import wave
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator

import numpy as np

from runtime.events import AudioChunk, Sentence
from runtime.ports import ThreadStream, Worker

SLICE_MS = 20


class SynthesizerError(RuntimeError):
    """A voice that cannot speak: the message says what is missing and how to get it."""

# RMS (as a fraction of full scale) that counts as a fully open mouth; speech sits near 0.1-0.3
FULL_VOLUME_RMS = 0.25


def envelope(pcm: bytes, rate: int, slice_ms: int = SLICE_MS) -> tuple[float, ...]:
    """Volume 0..1 for each `slice_ms` of mono s16 PCM (the last slice may be shorter)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if samples.size == 0:
        return ()
    step = max(1, rate * slice_ms // 1000)
    pad = (-samples.size) % step
    if pad:
        samples = np.concatenate([samples, np.zeros(pad, dtype=np.float32)])
    rms = np.sqrt(np.mean(samples.reshape(-1, step) ** 2, axis=1))
    if pad:  # the padded slice: average over the real samples only
        real = step - pad
        rms[-1] = rms[-1] * np.sqrt(step / real)
    return tuple(round(float(v), 3) for v in np.clip(rms / FULL_VOLUME_RMS, 0.0, 1.0))


def make_chunk(turn_id: str, seq: int, index: int, pcm: bytes, rate: int) -> AudioChunk:
    return AudioChunk(turn_id, seq, index, pcm, rate, envelope(pcm, rate), SLICE_MS)


def chunk_bytes(rate: int, chunk_ms: int) -> int:
    """Bytes of mono s16 PCM in `chunk_ms`, a whole number of lip-sync slices."""
    slices = max(1, chunk_ms // SLICE_MS)
    return slices * (rate * SLICE_MS // 1000) * 2


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


class ThreadedVoice:
    """Runs a blocking synthesis engine on a worker thread and streams its audio into asyncio as it
    is produced. Closing the iterator asks the engine to stop between pieces."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._worker = Worker(f"{name}-synth")  # one synthesis at a time: engines are not thread-safe
        weakref.finalize(self, self._worker.close)

    async def speak(
        self, sentence: Sentence, produce: Callable[[threading.Event], Iterator[tuple[bytes, int]]]
    ) -> AsyncGenerator[AudioChunk, None]:
        """`produce(stop)` yields (s16 mono PCM, sample rate) pieces; it runs on the worker."""
        stream: ThreadStream[tuple[bytes, int]] = ThreadStream()

        def work() -> None:
            try:
                for piece in produce(stream.stop):
                    if stream.stop.is_set():
                        break
                    stream.put(piece)
                stream.end()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                stream.fail(exc)

        self._worker.submit(work)
        index = 0
        try:
            async for pcm, rate in stream:
                yield make_chunk(sentence.turn_id, sentence.seq, index, pcm, rate)
                index += 1
        finally:
            stream.close()


def rechunk(pcm: bytes, size: int) -> Iterator[bytes]:
    """Split PCM into pieces of `size` bytes (the last may be shorter)."""
    for start in range(0, len(pcm), size):
        yield pcm[start : start + size]


MIC_RATE = 16000


def resample(samples: np.ndarray, rate: int, to: int = MIC_RATE) -> np.ndarray:
    """Linear resampling of float32 mono audio (good enough for references and VAD)."""
    if rate == to or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    n = int(round(samples.size * to / rate))
    return np.interp(np.arange(n) * (rate / to), np.arange(samples.size), samples).astype(np.float32)


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class PlaybackLog:
    """What the speakers played and when (on the runtime's clock), at 16 kHz: the reference that
    tells the microphone which sound is the character's own voice.

    Audio sits on one sample grid (clock time × 16000, rounded once per piece), so every read of
    the same moment sees the same samples in the same place.
    """

    def __init__(self, keep_s: float = 5.0) -> None:
        self.keep = int(keep_s * MIC_RATE)
        self._segments: list[tuple[int, np.ndarray]] = []  # (first sample's index on the grid, audio)

    def write(self, start: float, pcm: bytes, rate: int) -> None:
        first = round(start * MIC_RATE)
        self._segments.append((first, resample(pcm_to_float(pcm), rate)))
        horizon = first - self.keep
        self._segments = [(i, a) for i, a in self._segments if i + a.size > horizon]

    def cut(self, at: float) -> None:
        """Playback stopped at `at`: forget what was scheduled after it."""
        end = round(at * MIC_RATE)
        self._segments = [(i, a[: end - i]) for i, a in self._segments if i < end]

    def read(self, start: float, n: int) -> np.ndarray:
        """The n samples that were playing from clock time `start` on (zeros where nothing was)."""
        first = round(start * MIC_RATE)
        out = np.zeros(n, dtype=np.float32)
        for i, a in self._segments:
            lo, hi = max(0, i - first), min(n, i - first + a.size)
            if lo < hi:
                out[lo:hi] += a[lo - (i - first) : hi - (i - first)]
        return out


def dbfs(frame: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(frame)))) if frame.size else 0.0
    return 20 * np.log10(max(rms, 1e-9))


class EchoGate:
    """Tells whether a microphone frame is the character's own voice coming back.

    The frame is compared with what the speakers played in the last `max_delay_s` (normalized
    cross-correlation over every delay): a frame that the playback explains is echo. A person
    talking over the playback makes the frame unlike it, so barge-in still works.
    """

    def __init__(self, log: PlaybackLog, threshold: float = 0.5, max_delay_s: float = 0.35) -> None:
        self.log = log
        self.threshold = threshold
        self.max_delay = int(max_delay_s * MIC_RATE)

    def similarity(self, frame: np.ndarray, t: float) -> float:
        # pre-emphasis whitens speech, so two different voices (or words) rarely look alike
        ref = _emphasis(self.log.read(t - self.max_delay / MIC_RATE, frame.size + self.max_delay))
        frame = _emphasis(frame)
        n = frame.size
        energy = np.concatenate([[0.0], np.cumsum(ref.astype(np.float64) ** 2)])
        window = energy[n:] - energy[:-n]  # energy of ref[k:k+n] for every delay k
        if window.max() < 1e-6:
            return 0.0  # nothing was playing
        size = 1 << (n + ref.size).bit_length()
        dots = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(np.fft.rfft(frame, size)), size)[: ref.size - n + 1]
        norm = np.sqrt(window * float(np.dot(frame, frame))) + 1e-9
        audible = window > 1e-6  # delays where the playback was silent don't count (FFT noise)
        return float(np.max(np.where(audible, np.abs(dots) / norm, 0.0)))

    def is_echo(self, frame: np.ndarray, t: float) -> bool:
        return self.similarity(frame, t) >= self.threshold


def _emphasis(x: np.ndarray) -> np.ndarray:
    return (x[1:] - 0.97 * x[:-1]).astype(np.float32)
