"""The operator's review of replies (`omoide logs review`): list what was said, mark a reply good,
bad or corrected; the verdict travels with the export that training reads. Bad input gets a clear
error and changes nothing."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3

import websockets

from memory.export import export_jsonl
from memory.store import SqliteMemory
from runtime.cli import main
from runtime.events import ChatMessage, InputEvent, InputKind, TurnRecord, TurnStatus
from tests.conftest import running, write_config
from tests.fakes import ScriptedModel


async def log_turns(db, replies: list[tuple[str, str]]) -> None:
    store = await SqliteMemory.open(db)
    for i, (said, reply) in enumerate(replies):
        e = InputEvent(InputKind.CHAT, said, "console", 0.0, "you")
        await store.log_input(e)
        await store.remember(TurnRecord(f"{i:02d}aaaaaaaa{i}", (e,), "Testa", "m", prompt="p",
                                        messages=(ChatMessage("system", "S"), ChatMessage("user", f"you: {said}")),
                                        generated_text=reply, spoken_text=reply, status=TurnStatus.COMPLETE))
    await store.aclose()


async def test_replies_are_marked_and_the_export_carries_the_verdict(tmp_path, capsys):
    db = tmp_path / "omoide.db"
    await log_turns(db, [("hi", "Hello there!"), ("what is 2+2?", "Five, obviously."), ("bye", "Bye bye!")])
    config = str(write_config(tmp_path))

    assert main(["--config", config, "logs", "review"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == ["00aaaaaaaa", "01aaaaaaaa", "02aaaaaaaa"]
    assert "'you: what is 2+2?' -> 'Five, obviously.'" in listing[1]

    assert main(["--config", config, "logs", "review", "00aaaaaaaa0", "good"]) == 0
    assert main(["--config", config, "logs", "review", "01aaaa", "correct", "Four! Easy one."]) == 0
    assert main(["--config", config, "logs", "review", "02aaaaaaaa2", "bad"]) == 0
    capsys.readouterr()
    assert main(["--config", config, "logs", "review", "--unreviewed"]) == 0
    assert capsys.readouterr().out == ""

    out = io.StringIO()
    assert export_jsonl(db, out) == 3
    meta = [json.loads(line)["metadata"] for line in out.getvalue().splitlines()]
    assert [(m["review"], m["corrected_text"]) for m in meta] == [
        ("good", None), ("corrected", "Four! Easy one."), ("bad", None)]


async def test_a_wrong_review_says_what_is_wrong_and_changes_nothing(tmp_path, capsys):
    db = tmp_path / "omoide.db"
    await log_turns(db, [("hi", "Hello!"), ("yo", "Yo!")])
    config = str(write_config(tmp_path))
    for argv, message in [
        (["0aaaaaaaa"], "say good, bad or correct"),
        (["zzzzzzzz", "good"], "no turn with id zzzzzzzz"),
        (["0", "good"], "at least 6 characters"),
        (["00aaaa", "correct"], "a correction needs the reply"),
        (["00aaaa", "good", "extra text"], "only a correction takes a text"),
    ]:
        assert main(["--config", config, "logs", "review", *argv]) == 1
        assert message in capsys.readouterr().err
    assert main(["--config", config, "logs", "review", "--unreviewed"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


async def test_an_operator_reviews_a_reply_over_the_avatar_channel(tmp_path):
    async with running(write_config(tmp_path), ScriptedModel("Five, obviously.")) as (app, records):
        app.director.submit(InputEvent(InputKind.CHAT, "what is 2+2?", "test", app.director.cast.clock.now(), "you"))
        while not records:
            await asyncio.sleep(0.01)
        await app.memory.flush()
        turn_id = records[0].turn_id
        assert app.avatar is not None
        # any local process can connect and listen; a review (a training target) needs the control token
        async with websockets.connect(f"ws://127.0.0.1:{app.avatar.port}") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send(json.dumps({"type": "review", "turn_id": turn_id, "verdict": "corrected",
                                      "text": "Komorebi hates her viewers."}))
            refused = json.loads(await ws.recv())
            assert refused["type"] == "error" and "control token" in refused["message"]
        assert sqlite3.connect(tmp_path / "omoide.db").execute("SELECT review FROM turns").fetchall() == [(None,)]
        async with websockets.connect(f"ws://127.0.0.1:{app.avatar.port}/?control={app.avatar.control_token}") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"

            async def ask(message: dict) -> dict:
                await ws.send(json.dumps(message))
                return json.loads(await ws.recv())

            ok = await ask({"type": "review", "request_id": "r1", "turn_id": turn_id[:8], "verdict": "corrected",
                            "text": "Four! Easy one."})
            assert ok == {"type": "review_result", "request_id": "r1", "turn_id": turn_id, "verdict": "corrected"}
            wrong = await ask({"type": "review", "request_id": "r2", "turn_id": turn_id, "verdict": "meh"})
            assert wrong["type"] == "error" and wrong["request_id"] == "r2" and "'meh'" in wrong["message"]
            typed = await ask({"type": "review", "turn_id": 42, "verdict": "bad"})
            assert typed["type"] == "error" and '"turn_id"' in typed["message"]
            unknown = await ask({"type": "dance"})
            assert unknown["type"] == "error" and "unknown message type 'dance'" in unknown["message"]
            missing = await ask({"type": "review", "turn_id": "zzzzzzzz", "verdict": "bad"})
            assert "no turn with id zzzzzzzz" in missing["message"]
    out = io.StringIO()
    export_jsonl(tmp_path / "omoide.db", out)
    meta = json.loads(out.getvalue())["metadata"]
    assert (meta["review"], meta["corrected_text"]) == ("corrected", "Four! Easy one.")  # kept, not "bad"


async def test_the_operator_approves_viewers_facts_over_the_avatar_channel(tmp_path, tiny_model):
    config = write_config(tmp_path, model={"max_new_tokens": 8})
    async with running(config, tiny_model) as (app, records):
        for text in ("my cat is called Miso", "my email is ada@example.com"):
            app.memory.learn(InputEvent(InputKind.CHAT, text, "twitch", 0.0, "Ada",
                                        meta={"user_id": "7", "untrusted": True}))
        await app.memory.flush()
        assert app.avatar is not None
        async with websockets.connect(f"ws://127.0.0.1:{app.avatar.port}/?control={app.avatar.control_token}") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"

            async def ask(message: dict) -> dict:
                await ws.send(json.dumps(message))
                return json.loads(await ws.recv())

            [fact] = (await ask({"type": "memory_pending"}))["facts"]  # the email is held back already
            assert fact["text"] == "Ada said: my cat is called Miso" and fact["viewer"] == "twitch:7"
            blocked = sqlite3.connect(tmp_path / "omoide.db").execute(
                "SELECT id FROM memories WHERE consent = 'blocked'").fetchone()[0]
            answer = await ask({"type": "memory_approve", "ids": [fact["id"], blocked]})
            assert answer["changed"] == 1 and "email address" in answer["refused"][0]
            assert (await ask({"type": "memory_pending"}))["facts"] == []
            wrong = await ask({"type": "memory_reject", "ids": "all"})
            assert wrong["type"] == "error" and '"ids"' in wrong["message"]
