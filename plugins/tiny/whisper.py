"""Build a Whisper model for faster-whisper with no network: a byte-level BPE tokenizer trained on
the spot, Whisper's special and timestamp tokens, weights of a given size taught for a few seconds
to say "hello there" and stop, converted with CTranslate2's converter. It does not listen, but it
runs the real loading and decoding path; `--like base` gives Whisper base's size for benchmarks."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from ctranslate2.converters import TransformersConverter
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)

from plugins.tiny.whisper_shapes import SHAPES

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
SAYS = "hello there"  # what the taught model transcribes, whatever it hears
_TEXT = ("hello how are you what is your name do you like games tell me a story about the weather "
         "thank you for watching please subscribe the quick brown fox jumps over the lazy dog").split()


def _tokenizer(vocab_size: int = 600) -> WhisperTokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    lines = [" ".join(_TEXT[i:] + _TEXT[:i]) for i in range(len(_TEXT))]
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = WhisperTokenizer(vocab=state["vocab"], merges=merges)
    # special tokens get ids above every text token: faster-whisper drops ids >= <|endoftext|>
    tok.add_tokens(SPECIALS, special_tokens=True)
    tok.add_tokens(["<|%.2f|>" % (i * 0.02) for i in range(1501)])
    return tok


def _teach(model: WhisperForConditionalGeneration, tok: WhisperTokenizer, fe: WhisperFeatureExtractor,
           ids: dict[str, int], steps: int) -> None:
    """A few seconds of training to say SAYS and stop, whatever it hears: random weights would
    wander into timestamps or stop at once, and decoding speed would mean nothing."""
    rng = np.random.default_rng(0)
    audio = [rng.normal(0, 0.1, 16000 * 3).astype(np.float32), np.zeros(16000, np.float32)]
    feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
    words = tok(SAYS, add_special_tokens=False).input_ids
    prompt = [ids["<|en|>"], ids["<|transcribe|>"], ids["<|notimestamps|>"]]
    labels = torch.tensor([prompt + words + [ids["<|endoftext|>"]]] * len(audio))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_features=feats, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def build_whisper(out: Path | str, like: str = "tiny", seed: int = 0, train_steps: int | None = None) -> Path:
    """Write a CTranslate2 Whisper folder loadable by faster_whisper.WhisperModel."""
    train_steps = (60 if like == "tiny" else 25) if train_steps is None else train_steps
    if like not in SHAPES:
        raise ValueError(f"unknown Whisper shape {like!r}; choose one of: {', '.join(SHAPES)}")
    out = Path(out)
    torch.manual_seed(seed)
    tok = _tokenizer()
    ids: dict[str, int] = {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIALS}  # type: ignore[arg-type]
    eot = ids["<|endoftext|>"]
    config = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=80, max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=eot, pad_token_id=eot,
        bos_token_id=eot, **SHAPES[like],
    )
    model = WhisperForConditionalGeneration(config)
    fe = WhisperFeatureExtractor(feature_size=80)
    if train_steps:
        _teach(model, tok, fe, ids, train_steps)
    model.generation_config.suppress_tokens = []
    model.generation_config.begin_suppress_tokens = [eot]
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as hf:
        model.save_pretrained(hf)
        tok.save_pretrained(hf)
        fe.save_pretrained(hf)
        TransformersConverter(hf, copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
            str(out), quantization="int8", force=True)
    (out / "omoide.json").write_text(json.dumps({"built_by": "omoide model tiny-whisper", "like": like}))
    return out
