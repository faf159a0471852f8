"""Silero VAD, streaming: one 32 ms frame (512 samples at 16 kHz) in, a speech probability out.
The ONNX file ships inside faster-whisper, so nothing is downloaded."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime
from faster_whisper.vad import get_assets_path

FRAME = 512  # samples at 16 kHz
CONTEXT = 64


class SileroVad:
    """Keeps the model's state between frames, as a live stream needs."""

    def __init__(self) -> None:
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            os.path.join(get_assets_path(), "silero_vad_v6.onnx"), providers=["CPUExecutionProvider"],
            sess_options=opts)
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        if frame.shape != (FRAME,):
            raise ValueError(f"the VAD takes frames of {FRAME} samples, not {frame.shape}")
        x = np.concatenate([self._context, frame.astype(np.float32, copy=False)])[None, :]
        out, self._h, self._c = self.session.run(None, {"input": x, "h": self._h, "c": self._c})
        self._context = frame[-CONTEXT:].astype(np.float32)
        return float(np.asarray(out).reshape(-1)[0])
