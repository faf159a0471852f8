"""Build a tiny Piper voice with no network: an ONNX graph with Piper's inputs and outputs (phoneme
ids in, audio out, 256 samples a phoneme) and a voice config using Piper's own phoneme map. It
sounds like buzzing, but it runs through piper's real loading, phonemizing and inference code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

SAMPLES_PER_PHONEME = 256
RATE = 22050


class _TinyVoice(torch.nn.Module):
    def __init__(self, symbols: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(symbols, 32)
        self.out = torch.nn.Linear(32, SAMPLES_PER_PHONEME)

    def forward(self, input: torch.Tensor, input_lengths: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.out(self.emb(input)))  # [1, T, 256]
        # every input must be used, or the exporter drops it and piper's feed fails
        return h.reshape(1, 1, -1) * 0.3 * scales[1] + 0 * input_lengths.float().sum()


def build_voice(out: Path | str, name: str = "tiny", seed: int = 0) -> Path:
    """Write `NAME.onnx` and `NAME.onnx.json` into `out`; returns the .onnx path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    symbols = max(i for ids in DEFAULT_PHONEME_ID_MAP.values() for i in ids) + 1
    model = _TinyVoice(symbols).eval()
    onnx_path = out / f"{name}.onnx"
    ids = torch.randint(0, symbols, (1, 12))
    torch.onnx.export(
        model, (ids, torch.tensor([12]), torch.tensor([0.667, 1.0, 0.8])), str(onnx_path),
        input_names=["input", "input_lengths", "scales"], output_names=["output"],
        dynamic_axes={"input": {1: "T"}, "output": {2: "N"}}, dynamo=False, opset_version=17,
    )
    config = {
        "audio": {"sample_rate": RATE},
        "espeak": {"voice": "en-us"},
        "phoneme_type": "espeak",
        "num_symbols": symbols,
        "num_speakers": 1,
        "phoneme_id_map": DEFAULT_PHONEME_ID_MAP,
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "piper_version": "1.8.0",
        "built_by": "omoide model tiny-voice",
    }
    (out / f"{name}.onnx.json").write_text(json.dumps(config))
    return onnx_path
