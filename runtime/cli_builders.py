"""`omoide models tiny|tiny-whisper|tiny-voice`: small models built offline, for tests of the
plumbing and (with a real model's shape and random weights) for benchmarks."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from persona_model import tiny
from plugins.tiny import piper as tiny_piper
from plugins.tiny import whisper as tiny_whisper
from runtime.cli_common import as_typed


def cmd_tiny(args: argparse.Namespace) -> int:
    steps = args.train_steps if args.like in ("tiny", "learner") else 0
    with tqdm(total=steps, desc=f"teaching the {args.like} model", unit="step", disable=not steps) as bar:
        out = tiny.build(args.dir, like=args.like, train_steps=steps, progress=bar.update)
    print(f"built a {args.like} Llama-architecture model in {out}")
    if args.like in ("tiny", "learner"):
        print("it is for tests of the plumbing: it knows ten lines and babbles; the bundled model"
              " (model.id = \"bundled\") is the one that holds a conversation")
    print(as_typed(f"use it with: OMOIDE_MODEL__ID={out} omoide chat"))
    return 0


def cmd_tiny_whisper(args: argparse.Namespace) -> int:
    out = tiny_whisper.build_whisper(args.dir, like=args.like)
    print(f"built a {args.like}-sized random Whisper for faster-whisper in {out} (it only ever hears \"hello there\";"
          " the bundled tiny.en, stt.model = \"bundled\", really listens)")
    print(f"use it with: OMOIDE_STT__MODEL={out}")
    return 0


def cmd_tiny_voice(args: argparse.Namespace) -> int:
    out = tiny_piper.build_voice(args.dir)
    print(f"built a tiny Piper voice in {out} (it buzzes; tts.piper.voice = \"bundled\" really speaks)")
    print(f"use it with: OMOIDE_TTS__ENGINE=piper OMOIDE_TTS__PIPER__VOICE={out}")
    return 0
