import asyncio
import io
import json
import sqlite3

import pytest

from memory.export import export_jsonl
from memory.schema import SCHEMA_VERSION, SchemaError, migrate
from memory.store import SqliteMemory
from runtime.events import ChatMessage, InputEvent, InputKind, TurnRecord, TurnStatus


def event(text, author="viewer"):
    return InputEvent(InputKind.CHAT, text, "test", 0.0, author)


async def test_inputs_are_committed_when_their_write_resolves(tmp_path):
    store = await SqliteMemory.open(tmp_path / "db.sqlite")
    try:
        e = event("hello")
        await store.log_input(e)
        # another connection (another process, after a crash) sees it at once
        rows = sqlite3.connect(tmp_path / "db.sqlite").execute("select text, author from inputs").fetchall()
        assert rows == [("hello", "viewer")]
    finally:
        await store.aclose()


async def test_writes_are_batched_and_turns_upsert(tmp_path):
    store = await SqliteMemory.open(tmp_path / "db.sqlite")
    try:
        events = [event(f"m{i}") for i in range(50)]
        waits = [store.log_input(e) for e in events]
        await asyncio.gather(*waits)
        rec = TurnRecord("t1", (events[0],), "P", "m", prompt="PROMPT",
                         messages=(ChatMessage("system", "s"), ChatMessage("user", "viewer: m0")))
        await store.remember(rec)
        rec.spoken_text, rec.status = "Hi there.", TurnStatus.COMPLETE
        await store.remember(rec)
        await store.flush()
        db = sqlite3.connect(tmp_path / "db.sqlite")
        assert db.execute("select count(*) from inputs").fetchone() == (50,)
        assert db.execute("select status, spoken_text, prompt from turns").fetchall() == [
            ("complete", "Hi there.", "PROMPT")]
        assert db.execute("select turn_id from inputs where text = 'm0'").fetchone() == ("t1",)
        history = await store.recent_history(10)
        assert history == [ChatMessage("user", "viewer: m0"), ChatMessage("assistant", "Hi there.")]
    finally:
        await store.aclose()


async def test_a_turn_left_started_by_a_crash_is_marked_on_the_next_start(tmp_path):
    store = await SqliteMemory.open(tmp_path / "db.sqlite")
    await store.remember(TurnRecord("t1", (event("x"),), "P", "m", prompt="p"))
    await store.aclose()
    store = await SqliteMemory.open(tmp_path / "db.sqlite")
    await store.aclose()
    row = sqlite3.connect(tmp_path / "db.sqlite").execute("select status, error, prompt from turns").fetchone()
    assert row == ("failed", "process ended mid-turn", "p")


async def test_recall_finds_memories_by_their_words(tmp_path):
    store = await SqliteMemory.open(tmp_path / "db.sqlite")
    try:
        await store.add_memory("Komorebi's favourite crop is turnips.", "card")
        await store.add_memory("She hums the Moss Waltz when happy.", "card")
        await store.add_memory("She hums the Moss Waltz when happy.", "card")  # no duplicate
        await store.flush()
        found = await store.recall("what crop do you grow? turnips?", 3)
        assert [m.text for m in found] == ["Komorebi's favourite crop is turnips."]
        assert await store.recall("'\"* OR ) (", 3) == []  # query syntax is not the user's to write
    finally:
        await store.aclose()


def test_schema_is_versioned_and_a_newer_one_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "db.sqlite")
    assert migrate(db) == 0
    assert db.execute("pragma user_version").fetchone() == (SCHEMA_VERSION,)
    assert migrate(db) == SCHEMA_VERSION  # idempotent
    db.execute(f"pragma user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match="newer than this Omoide"):
        migrate(db)


async def test_export_writes_heard_text_only(tmp_path):
    store = await SqliteMemory.open(tmp_path / "db.sqlite")
    msgs = (ChatMessage("system", "You are P."), ChatMessage("user", "viewer: hi"))
    for i, (status, spoken) in enumerate([(TurnStatus.COMPLETE, "Hello!"), (TurnStatus.INTERRUPTED, "Well"),
                                          (TurnStatus.FAILED, ""), (TurnStatus.INTERRUPTED, "")]):
        e = event("hi")
        await store.log_input(e)
        rec = TurnRecord(f"t{i}", (e,), "P", "m", prompt="p", messages=msgs, generated_text=spoken + " more",
                         spoken_text=spoken, status=TurnStatus.STARTED)
        await store.remember(rec)
        rec.status = status
        await store.remember(rec)
    await store.aclose()
    out = io.StringIO()
    assert export_jsonl(tmp_path / "db.sqlite", out) == 2
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[0]["messages"] == [{"role": "system", "content": "You are P."},
                                    {"role": "user", "content": "viewer: hi"},
                                    {"role": "assistant", "content": "Hello!"}]
    assert lines[1]["messages"][-1] == {"role": "assistant", "content": "Well"}
    assert lines[1]["metadata"]["interrupted"] is True
    assert lines[1]["metadata"]["inputs"][0]["text"] == "hi"
    out = io.StringIO()
    assert export_jsonl(tmp_path / "db.sqlite", out, include_interrupted=False) == 1


async def test_a_lorebook_memory_the_operator_deleted_or_edited_does_not_come_back(tmp_path):
    """The card's lorebook is added at every start; what the operator took out stays out."""
    from memory import admin

    lore = ["Komorebi rode the night train.", "Komorebi's favourite tea is genmaicha."]
    db = tmp_path / "omoide.db"
    for start in range(2):
        store = await SqliteMemory.open(db)
        for text in lore:
            await store.add_memory(text, source="card")
        await store.flush()
        await store.aclose()
        if start == 0:
            [(train,), (tea,)] = sqlite3.connect(db).execute("SELECT id FROM memories ORDER BY id").fetchall()
            admin.delete(db, train)
            admin.edit(db, tea, "Komorebi's favourite tea is hojicha.")
    texts = {t for (t,) in sqlite3.connect(db).execute("SELECT text FROM memories")}
    assert texts == {"Komorebi's favourite tea is hojicha."}
    admin.add(db, "Komorebi rode the night train.")  # the operator may add it back by hand
    assert "Komorebi rode the night train." in {t for (t,) in sqlite3.connect(db).execute("SELECT text FROM memories")}
