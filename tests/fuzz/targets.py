"""The parsers that take input from outside, each wrapped to take raw bytes and to let through
only the error that names what was wrong. Anything else they raise is a bug. Driven by atheris
(tests/fuzz/run.py, coverage-guided) and replayed from tests/fuzz/corpus by test_fuzz_corpus.py."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from persona_model.card import CardError, parse_card_bytes
from persona_model.json_schema import SchemaError, grammar, tighten
from plugins.game_neuro import (
    MAX_ACTIONS,
    MAX_GAMES,
    MAX_QUEUED,
    GameServer,
    ProtocolError,
    _Connection,
    check_schema,
)
from runtime.config import ConfigError, load
from runtime.ports import MonotonicClock


def card(data: bytes) -> None:
    try:
        parse_card_bytes(data, "fuzz")
    except CardError as exc:
        assert str(exc).startswith("fuzz"), exc


def schema(data: bytes) -> None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return  # not a JSON document: the game server refuses it before it is a schema
    try:
        check_schema(value)
        grammar(tighten(value))
    except (ProtocolError, SchemaError) as exc:
        assert str(exc), exc


_DIR = Path(tempfile.mkdtemp(prefix="omoide-fuzz-"))


def config(data: bytes) -> None:
    path = _DIR / "c.toml"
    path.write_bytes(data)
    try:
        load(path, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc), exc


class _Socket:
    """Where the server's answers go in the harness (the real socket is in test_fuzz.py)."""

    async def send(self, message: str) -> None:
        pass


_loop = asyncio.new_event_loop()
_server = GameServer(MonotonicClock(), port=0, queue_size=64)
_conn = _Connection(_Socket(), "fuzz")  # type: ignore[arg-type]


def game_frame(data: bytes) -> None:
    """One frame, text when it is UTF-8 (as websockets delivers it), else binary; the server's
    state stays inside its limits whatever came before."""
    raw: Any = data
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        _loop.run_until_complete(_server._frame(_conn, raw))
    except ProtocolError as exc:
        assert str(exc), exc
    while not _server._events.empty():  # the director would take them
        _server._events.get_nowait()
    assert len(_conn.games) <= MAX_GAMES
    assert all(len(g.actions) <= MAX_ACTIONS and len(g.queued) <= MAX_QUEUED for g in _conn.games.values())


TARGETS = {"card": card, "schema": schema, "config": config, "game_frame": game_frame}
