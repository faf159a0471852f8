"""The `omoide` command as a user meets it: options where they type them, help on every command,
an error as one line and never a traceback, and light commands that answer at once."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from memory.schema import migrate
from runtime.cli import main, parser
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent


def database(path: Path) -> Path:
    """A memory database as a character's first start leaves it."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        migrate(conn)
    return path


def leaves(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command: (its words, its parser)."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, p)]
    found = []
    for name, child in subs[0].choices.items():
        if child.prog.split()[-1] == name:  # aliases ("models") are the same parser
            found += leaves(child, (*path, name))
    return found


def test_every_command_says_what_it_does_and_takes_config_after_its_name():
    commands = leaves(parser())
    assert len(commands) > 25 and (("memory", "list") in [c for c, _ in commands])
    for words, p in commands:
        assert p.description, f"omoide {' '.join(words)} --help does not say what it does"
        assert "--config" in p._option_string_actions, f"omoide {' '.join(words)} does not take --config"


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_read_before_or_after_the_command(tmp_path, capsys, where):
    config = str(write_config(tmp_path, persona={"name": "Wherever"}))
    args = ["--config", config, "config", "check"] if where == "before" else ["config", "check", "--config", config]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["persona"]["name"] == "Wherever"


def test_a_nested_command_takes_config_and_database_after_its_name(tmp_path, capsys):
    config = str(write_config(tmp_path))
    other = database(tmp_path / "other.db")
    assert main(["memory", "add", "Ada likes trains", "--config", config, "--database", str(other)]) == 0
    assert main(["memory", "--database", str(other), "list", "--config", config]) == 0
    assert "Ada likes trains" in capsys.readouterr().out
    assert not (tmp_path / "omoide.db").exists()  # memory.database was not touched


def test_an_unknown_memory_is_one_line_not_a_traceback(tmp_path, capsys):
    config = str(write_config(tmp_path))
    database(tmp_path / "omoide.db")
    assert main(["memory", "add", "something", "--config", config]) == 0
    assert main(["memory", "delete", "9999", "--config", config]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "9999" in err[0]


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    config = str(write_config(tmp_path))
    database(tmp_path / "omoide.db")
    for i in range(3):
        assert main(["memory", "add", f"memory number {i}", "--config", config]) == 0
    # `omoide memory list | head -1` with the reader gone at once: no BrokenPipeError traceback
    proc = subprocess.run(f"{sys.executable} -m runtime.cli memory list --config {config} | true",
                          shell=True, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", [["config", "check"], ["memory", "list"], ["logs", "export", "-"],
                                     ["logs", "review"], ["models", "path", "llm"]])
def test_light_commands_do_not_load_the_model_libraries(tmp_path, command):
    """`omoide memory list` and `omoide config check` answer in well under a second because they
    do not import torch or transformers (bench: docs/benchmarks.md, light commands)."""
    config = str(write_config(tmp_path))
    database(tmp_path / "omoide.db")
    code = ("import sys\nfrom runtime.cli import main\n"
            f"code = main({[*command, '--config', config]!r})\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'faster_whisper') if m in sys.modules)\n"
            "print('HEAVY', heavy, code, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "HEAVY [] 0" in proc.stderr, proc.stderr
