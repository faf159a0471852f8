"""The `omoide` command."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path

from memory.export import export_jsonl
from persona_model import tiny
from persona_model.hub import ModelNotFound, pull
from runtime import app, logs
from runtime.config import Config, ConfigError, load

EXIT_CONFIG = 2
EXIT_MODEL = 3


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("OMOIDE_CONFIG")
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    return load(path)


def cmd_run(args: argparse.Namespace, chat: bool = False) -> int:
    config = _config(args)
    logs.setup(config.log.level, config.log.format)
    try:
        asyncio.run(app.run(config, console=True if chat else None, exit_when_sources_end=chat))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_model_tiny(args: argparse.Namespace) -> int:
    out = tiny.build(args.dir, like=args.like, train_steps=args.train_steps)
    print(f"built a {args.like} Llama-architecture model in {out}")
    print(f"use it with: OMOIDE_MODEL__ID={out} omoide chat")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    config = _config(args)
    model_id = args.id or config.model.id
    target = pull(model_id, Path(args.dir).expanduser() if args.dir else config.path(config.model.models_dir))
    print(f"{model_id} is in {target}")
    return 0


def cmd_logs_export(args: argparse.Namespace) -> int:
    config = _config(args)
    database = Path(args.database) if args.database else config.path(config.memory.database)
    since = dt.datetime.fromisoformat(args.since).timestamp() if args.since else None
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        n = export_jsonl(database, out, since=since, include_interrupted=not args.complete_only)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {n} turns from {database} to {args.out}", file=sys.stderr)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _config(args)
    print(config.model_dump_json(indent=2, exclude={"base_dir"}))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omoide", description="A real-time AI VTuber character runtime.")
    p.add_argument("--config", metavar="PATH", help="config file (default: ./config.toml, or $OMOIDE_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="start the character with every source in the config").set_defaults(
        func=cmd_run)
    sub.add_parser("chat", help="talk to the character in the terminal").set_defaults(
        func=lambda a: cmd_run(a, chat=True))

    model = sub.add_parser("model", aliases=["models"], help="build or download models")
    msub = model.add_subparsers(dest="model_command", required=True)
    t = msub.add_parser("tiny", help="build a small offline model (no network)")
    t.add_argument("dir", help="folder to write the model to")
    t.add_argument("--like", default="tiny", choices=sorted(tiny.SHAPES),
                   help="random weights of a real model's shape, for benchmarks (default: tiny)")
    t.add_argument("--train-steps", type=int, default=120,
                   help="steps of training for the tiny shape so it speaks in sentences (default 120)")
    t.set_defaults(func=cmd_model_tiny)
    pl = msub.add_parser("pull", help="download a model from the Hugging Face Hub")
    pl.add_argument("id", nargs="?", help="hub id (default: model.id from the config)")
    pl.add_argument("--dir", help="models folder (default: model.models_dir)")
    pl.set_defaults(func=cmd_models_pull)

    lg = sub.add_parser("logs", help="the interaction log")
    lsub = lg.add_subparsers(dest="logs_command", required=True)
    ex = lsub.add_parser("export", help="write turns as chat-format JSONL for training")
    ex.add_argument("out", help="output file (- for stdout)")
    ex.add_argument("--since", help="only turns from this ISO date/time on")
    ex.add_argument("--complete-only", action="store_true", help="leave out interrupted turns")
    ex.add_argument("--database", help="database file (default: memory.database)")
    ex.set_defaults(func=cmd_logs_export)

    cfg = sub.add_parser("config", help="the configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    csub.add_parser("check", help="validate and print the effective configuration").set_defaults(
        func=cmd_config_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except app.StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ModelNotFound as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
