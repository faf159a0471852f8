"""Who may talk to the character's servers, and what leaves the machine: tokens, browser origins,
rate limits, listening beyond 127.0.0.1, secrets in logs and exports (docs/security.md)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
import urllib.request

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from memory.export import export_jsonl, export_memories
from plugins.avatar_ws import AvatarServer
from plugins.game_neuro import GameServer
from runtime.app import build
from runtime.config import load
from runtime.errors import StartupError
from runtime.events import InputEvent, InputKind
from tests.conftest import FastClock, running, write_config

EVIL = "https://evil.example"


async def handshake(url: str, origin: str | None = None) -> int:
    """The HTTP status of a WebSocket handshake: 101 when it opened."""
    try:
        async with websockets.connect(url, origin=origin):  # type: ignore[arg-type]
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_a_web_page_cannot_open_the_avatar_channel_but_our_overlay_can():
    server = AvatarServer(port=0, allowed_origins=["https://my-overlay.example"])
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    try:
        assert await handshake(url, EVIL) == 403
        assert await handshake(url, f"http://127.0.0.1:{server.port}") == 101  # /overlay, same origin
        assert await handshake(url, "https://my-overlay.example") == 101
        assert await handshake(url) == 101  # a tool, not a browser
    finally:
        await server.aclose()


async def test_a_web_page_cannot_drive_the_game_api_unless_allowed():
    server = GameServer(FastClock(), port=0, allowed_origins=["https://mygame.example"])
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    try:
        assert await handshake(url, EVIL) == 403
        assert await handshake(url, "https://mygame.example") == 101
        assert await handshake(url) == 101
    finally:
        await server.aclose()


async def test_with_a_token_the_avatar_channel_and_the_overlay_page_ask_for_it():
    server = AvatarServer(port=0, token="t0ken")
    await server.start()
    base = f"127.0.0.1:{server.port}"
    try:
        assert await handshake(f"ws://{base}") == 401
        assert await handshake(f"ws://{base}/?token=wrong") == 401
        assert await handshake(f"ws://{base}/?token=t0ken") == 101

        def get(path: str) -> int:
            try:
                return int(urllib.request.urlopen(f"http://{base}{path}", timeout=5).status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await asyncio.to_thread(get, "/overlay") == 401
        assert await asyncio.to_thread(get, "/overlay?token=t0ken") == 200
    finally:
        await server.aclose()


async def test_a_flooding_client_is_slowed_with_an_error_and_keeps_its_connection():
    handled: list[str] = []

    async def say(message: dict) -> dict:
        handled.append(message["text"])
        return {}

    server = AvatarServer(port=0, commands={"say": say}, rate=5, burst=10)
    await server.start()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}") as ws:
            await ws.recv()  # hello
            for i in range(200):
                await ws.send(json.dumps({"type": "say", "text": str(i)}))
            errors = []
            async with asyncio.timeout(10):
                while not errors:
                    m = json.loads(await ws.recv())
                    if m["type"] == "error":
                        errors.append(m["message"])
            assert "more than 5 messages a second" in errors[0]
            assert 10 <= len(handled) < 30  # the burst, and what the rate refilled meanwhile
            await asyncio.sleep(0.5)  # the bucket refills: the client is heard again
            await ws.send(json.dumps({"type": "say", "text": "later", "request_id": "r"}))
            async with asyncio.timeout(10):
                while json.loads(await ws.recv()).get("request_id") != "r":
                    pass
            assert handled[-1] == "later"
    finally:
        await server.aclose()


@pytest.mark.parametrize("section", ["avatar", "game"])
async def test_listening_beyond_this_machine_needs_a_token(tmp_path, tiny_model, section):
    extra = {"game": {"enabled": True, "port": 0}} if section == "game" else {}
    config = load(write_config(tmp_path, **{**extra, section: {**extra.get(section, {}), "host": "0.0.0.0"}}),
                  env={})
    with pytest.raises(StartupError, match=f"{section}.host = '0.0.0.0' lets other machines connect"):
        await build(config, model=tiny_model, console=False, clock=FastClock())
    # nothing was left listening or open: the same start with a token works
    config = load(write_config(tmp_path, **{**extra, section: {**extra.get(section, {}), "host": "0.0.0.0",
                                                                 "port": 0, "token": "x"}}), env={})
    app = await build(config, model=tiny_model, console=False, clock=FastClock())
    await app.aclose()


async def test_exports_can_name_no_viewer(tmp_path, tiny_model):
    path = write_config(tmp_path, model={"max_new_tokens": 8})
    async with running(path, tiny_model) as (app, records):
        app.director.submit(InputEvent(InputKind.CHAT, "hi, I am Ada and my cat is called Tofu", "twitch",
                                       app.director.cast.clock.now(), "Ada",
                                       meta={"user_id": "48151623", "event": "message"}))
        async with asyncio.timeout(60):
            while not records:
                await asyncio.sleep(0.05)
        await app.memory.add_memory("Ada's cat is called Tofu", source="test", viewer="twitch:48151623")
        await app.memory.flush()
    db = app.memory.path
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM viewers").fetchone()[0] == 1
    plain, scrubbed, memories = io.StringIO(), io.StringIO(), io.StringIO()
    assert export_jsonl(db, plain) == export_jsonl(db, scrubbed, scrub=True) == 1
    export_memories(db, memories, scrub=True)
    assert "Ada" in plain.getvalue()
    for text in (scrubbed.getvalue(), memories.getvalue()):
        assert not re.search(r"\bada\b", text, re.IGNORECASE) and "48151623" not in text
        assert "viewer1" in text
    assert "Tofu" in memories.getvalue()  # the fact stays; only who said it goes


async def test_pseudonyms_stand_for_viewers_never_for_common_words(tmp_path):
    """The terminal's person is named "you" and a viewer is named "god": scrubbing names them where
    they stand for a viewer (authors, @mentions, "you said:") and leaves the words alone."""
    from memory.store import SqliteMemory
    from runtime.events import ChatMessage, TurnRecord, TurnStatus

    store = await SqliteMemory.open(tmp_path / "omoide.db")
    lines = [InputEvent(InputKind.CHAT, "my cat is called Miso", "console", 0.0, "you"),
             InputEvent(InputKind.CHAT, "hey @you, thank you! god i love this game, ada here", "twitch", 0.0, "Ada",
                        meta={"user_id": "7", "untrusted": True}),
             InputEvent(InputKind.CHAT, "oh my god", "twitch", 0.0, "god", meta={"user_id": "8", "untrusted": True})]
    for i, e in enumerate(lines):
        store.learn(e)
        await store.log_input(e)
        await store.remember(TurnRecord(f"turn{i}", (e,), "Testa", "m", prompt="p", status=TurnStatus.COMPLETE,
                                        spoken_text="Thank you, Ada! Did you see that, god?",
                                        messages=(ChatMessage("user", f"{e.author}: {e.text}"),)))
    await store.flush()
    await store.aclose()
    turns, memories = io.StringIO(), io.StringIO()
    export_jsonl(tmp_path / "omoide.db", turns, scrub=True)
    export_memories(tmp_path / "omoide.db", memories, scrub=True)
    said = [json.loads(line)["messages"] for line in turns.getvalue().splitlines()]
    you, ada, god = (m[0]["content"].split(":")[0] for m in said)  # each author's pseudonym
    assert {you, ada, god} == {"viewer1", "viewer2", "viewer3"}
    assert said[1][0]["content"] == f"{ada}: hey @{you}, thank you! god i love this game, {ada} here"
    assert said[2][0]["content"] == f"{god}: oh my god"  # the words stay words
    assert said[0][1]["content"] == f"Thank you, {ada}! Did you see that, god?"
    assert f"{you} said: my cat is called Miso" in memories.getvalue()


async def test_viewer_text_reaches_no_shell_path_or_sql(tmp_path, tiny_model):
    marker = tmp_path / "pwned"
    attacks = ["'); DROP TABLE inputs; --", f"$(touch {marker}) `touch {marker}`; touch {marker}",
               "../../../../etc/passwd", "%s %n %x {0} {{7*7}}", "\x00\x1b[2J\u202e"]
    path = write_config(tmp_path, model={"max_new_tokens": 8})
    async with running(path, tiny_model) as (app, records):
        for text in attacks:
            app.director.submit(InputEvent(InputKind.CHAT, text, "twitch", app.director.cast.clock.now(), text,
                                           meta={"user_id": text}))
        async with asyncio.timeout(60):
            while len(records) < len(attacks):
                await asyncio.sleep(0.05)
    conn = sqlite3.connect(tmp_path / "omoide.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = sorted(t for (t,) in conn.execute("SELECT text FROM inputs"))
    # stored verbatim, but for control characters, which the chat filter takes out
    assert stored == sorted([*attacks[:-1], "[2J"])
    assert sorted(a for (a,) in conn.execute("SELECT author FROM inputs")) == sorted(attacks)
    assert not marker.exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"config.toml", "omoide.db", "omoide.db-shm", "omoide.db-wal",
                                                    "training_logs"}
    assert [p.name for p in (tmp_path / "training_logs").iterdir()] == ["avatar_control.token"]
