"""What every `omoide` command shares: the configuration it names, its logs, its exit codes and
the errors that end it with a message instead of a traceback. Light: no model library is imported
here, so that `omoide config check` and `omoide memory list` answer at once."""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import sqlite3
import sys
from pathlib import Path

from memory.schema import SchemaError
from runtime import log_format
from runtime.bundled import BundledError
from runtime.characters import cast_of, for_command
from runtime.config import Config, ConfigError, load
from runtime.errors import StartupError

EXIT_ERROR = 1  # a bad argument, a missing file
EXIT_CONFIG = 2  # the configuration, or what it names, is wrong
EXIT_MODEL = 3  # a model is not on this machine
_OMOIDE = re.compile(r"(?<![\w/.-])omoide (?=[a-z])")

# What ends a command with a message: (error, exit code, what the message starts with). A
# command's module adds its own as ERRORS; these are checked after them.
Errors = tuple[tuple[type[BaseException], int, str], ...]
ERRORS: Errors = (
    (ConfigError, EXIT_CONFIG, ""),
    (StartupError, EXIT_CONFIG, "cannot start: "),
    (SchemaError, EXIT_CONFIG, "memory database: "),
    (BundledError, EXIT_MODEL, "cannot start: "),
    (KeyError, EXIT_ERROR, "error: "),  # an unknown name: a memory id, an adapter version
    (FileNotFoundError, EXIT_ERROR, "error: "),
    (ValueError, EXIT_ERROR, "error: "),
    (sqlite3.Error, EXIT_ERROR, "error: database: "),  # e.g. an edit to a text another memory has
)


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


def config_from(args: argparse.Namespace, everyone: bool = False) -> Config:
    """The configuration `--config` names, else $OMOIDE_CONFIG, else ./config.toml, else defaults;
    that of the character `--character` names (else the first), or, with `everyone` and no
    --character, all of them (`omoide run` starts every character of [[characters]])."""
    path = getattr(args, "config", None) or os.environ.get("OMOIDE_CONFIG")
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    config, name = load(path), getattr(args, "character", None)
    if everyone and name is None and config.characters:
        cast_of(config)  # a wrong entry stops it here, in one line
        return config
    return for_command(config, name)


def database_from(args: argparse.Namespace, config: Config) -> Path:
    """`--database`, else memory.database."""
    return Path(args.database) if getattr(args, "database", None) else config.path(config.memory.database)


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
    log_format.setup(c.level, c.format, file, terminal)
