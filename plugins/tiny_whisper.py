"""Build a Whisper model for faster-whisper with no network: a byte-level BPE tokenizer trained on
the spot, Whisper's special and timestamp tokens, random weights of a given size, converted with
CTranslate2's converter. Random weights transcribe gibberish, but through the real loading and
decoding path; `--like base` gives Whisper base's size for benchmarks."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from ctranslate2.converters import TransformersConverter
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128),
    # Whisper base's shape (vocabulary aside: ours is small and made on the spot)
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048),
}
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


def build_whisper(out: Path | str, like: str = "tiny", seed: int = 0) -> Path:
    """Write a CTranslate2 Whisper folder loadable by faster_whisper.WhisperModel."""
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
    model.generation_config.suppress_tokens = []
    model.generation_config.begin_suppress_tokens = [eot]
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]  # type: ignore[attr-defined]
    fe = WhisperFeatureExtractor(feature_size=80)
    with tempfile.TemporaryDirectory() as hf:
        model.save_pretrained(hf)
        tok.save_pretrained(hf)
        fe.save_pretrained(hf)
        TransformersConverter(hf, copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
            str(out), quantization="int8", force=True)
    # random weights: keep decoding to tokens with letters in them (no specials, no timestamps, no
    # control bytes), so that it says something that looks like words
    ct2 = json.loads((out / "config.json").read_text())
    wordless = [i for i in range(eot) if not any(c.isalpha() for c in tok.decode([i]))]
    ct2["suppress_ids"] = wordless + list(range(eot + 1, len(tok)))
    ct2["suppress_ids_begin"] = [eot]
    (out / "config.json").write_text(json.dumps(ct2))
    (out / "omoide.json").write_text(json.dumps({"built_by": "omoide model tiny-whisper", "like": like}))
    return out
