"""Audio helpers shared by the synthesizers and sinks: chunking, volume envelopes, WAV."""

from __future__ import annotations

import io
import wave

import numpy as np

from runtime.events import AudioChunk

SLICE_MS = 20
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
