"""Build small Llama-architecture models with no network: a byte-level BPE tokenizer trained on the
spot, a ChatML chat template, and either a tiny model (for tests and offline smoke runs) or random
weights of a real model's shape (same compute, for benchmarks).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import pathlib
import random
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from persona_model.prompt import CHATML, DEFAULT_SYSTEM
from persona_model.shapes import SHAPES

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# What the tiny model learns to say, so that offline replies come in sentences.
_LINES = [
    "Hello chat, it is so good to see you here tonight.",
    "I love playing games with all of you.",
    "That is a great question, let me think about it.",
    "Thank you for the follow, welcome to the stream.",
    "I am a little robot who likes music and puzzles.",
    "Oh no, I lost again. Let us try one more time!",
    "Do you want to hear a song? I know a few.",
    "The weather in my head is always sunny.",
    "We should build a castle made of cookies.",
    "Good night everyone, thanks for hanging out with me.",
]


def corpus() -> list[str]:
    """English text that every Python install carries: the standard library's docstrings."""
    lines: list[str] = list(_LINES)
    for module in (asyncio, collections, json, logging, pathlib, sqlite3, threading, random):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc:
                lines.extend(line for line in doc.splitlines() if line.strip())
    return lines


def build_tokenizer(lines: list[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML)


def build(out: Path | str, like: str = "tiny", train_steps: int = 120, seed: int = 0,
          progress: Callable[[int], object] | None = None) -> Path:
    """Write a model folder loadable by `AutoModelForCausalLM` / `AutoTokenizer`. `progress` is
    called with 1 after each training step."""
    if like not in SHAPES:
        raise ValueError(f"unknown shape {like!r}; choose one of: {', '.join(SHAPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = build_tokenizer(corpus())
    shape = dict(SHAPES[like])
    vocab = shape.pop("vocab_size") or len(tokenizer)
    config = LlamaConfig(vocab_size=vocab, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **shape)
    model = LlamaForCausalLM(config)
    if like in ("tiny", "learner") and train_steps:
        _teach(model, tokenizer, train_steps, progress)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # a real shape has a larger vocabulary than our tokenizer: never pick ids it cannot decode
        suppress_tokens=list(range(len(tokenizer), vocab)) or None,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "omoide.json").write_text(json.dumps({"built_by": "omoide model tiny", "like": like}))
    return out


def _teach(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, steps: int,
           progress: Callable[[int], object] | None = None) -> None:
    """A few seconds of training on chat-shaped replies: enough for words and sentence ends. It
    learns its ten lines and babbles past them: a model for plumbing, not for conversation."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": DEFAULT_SYSTEM.format(name="Tiny")},
             {"role": "user", "content": f"viewer: {random.choice(_LINES)}"},
             {"role": "assistant", "content": reply}],
            tokenize=False,
        )
        for reply in _LINES * 2
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if progress is not None:
            progress(1)
    model.eval()
