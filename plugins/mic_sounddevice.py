"""The computer's microphone, through PortAudio (sounddevice): 16 kHz mono frames of 32 ms."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from plugins.audio import MIC_RATE
from plugins.listening import MicrophoneError
from plugins.vad_silero import FRAME
from runtime.ports import Clock


class SoundDeviceMicrophone:
    def __init__(self, clock: Clock, device: str | int | None = None) -> None:
        try:
            import sounddevice as sd  # raises OSError when the PortAudio library is missing

            sd.check_input_settings(device=device, channels=1, dtype="float32", samplerate=MIC_RATE)
        except Exception as exc:  # noqa: BLE001 - any failure here means "no microphone"
            raise MicrophoneError(
                f"no usable microphone ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__});"
                " pick one with stt.input_device (python -m sounddevice lists them), or set stt.input"
                " to a WAV file"
            ) from None
        self.sd: Any = sd
        self.clock = clock
        self.device = device

    async def frames(self) -> AsyncIterator[tuple[float, np.ndarray]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=512)  # 16 s of audio at most

        def callback(indata: Any, frames: int, time: Any, status: Any) -> None:
            frame = np.array(indata[:, 0], dtype=np.float32)
            loop.call_soon_threadsafe(_put_latest, queue, frame)

        stream = self.sd.InputStream(samplerate=MIC_RATE, channels=1, dtype="float32", blocksize=FRAME,
                                     device=self.device, callback=callback)
        with stream:
            while True:
                frame = await queue.get()
                yield self.clock.now() - FRAME / MIC_RATE, frame


def _put_latest(queue: asyncio.Queue[np.ndarray], frame: np.ndarray) -> None:
    if queue.full():  # the loop fell far behind: keep the newest audio
        queue.get_nowait()
    queue.put_nowait(frame)
