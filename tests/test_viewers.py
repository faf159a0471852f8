"""Viewers the character remembers: profiles, the facts they state about themselves (a newer
statement supersedes an older one), across restarts; the operator's memory commands; and a
database file that is not ours is never touched."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from memory.schema import SchemaError
from memory.store import SqliteMemory
from memory.viewers import facts_in
from runtime.cli import main
from runtime.events import InputEvent, InputKind, viewer_key
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent


async def said(store: SqliteMemory, event: InputEvent) -> None:
    """A chat line as the director takes it: logged, and learned from."""
    store.learn(event)
    await store.log_input(event)


def chat(text: str, author: str = "Ada", user_id: str = "42", **meta) -> InputEvent:
    return InputEvent(InputKind.CHAT, text, "twitch", 0.0, author, meta={"user_id": user_id, "untrusted": True, **meta})


def test_self_statements_are_recognised():
    facts = facts_in(chat("lol my cat is called Miso and I live in Osaka!"))
    assert [(f.subject, f.text) for f in facts] == [("cat", "Ada said: my cat is called Miso and I live in Osaka"),
                                                    ("live", "Ada said: I live in Osaka")]
    assert facts_in(chat("what game is this?")) == []


async def test_profiles_and_facts_survive_a_restart_and_newer_facts_supersede(tmp_path):
    db = tmp_path / "omoide.db"
    store = await SqliteMemory.open(db)
    await said(store, chat("hi! my cat is called Miso", subscriber=True, sub_months=14))
    await said(store, chat("my favourite game is Tetris"))
    await said(store, chat("actually my cat is called Tofu now"))
    await said(store, chat("hello", author="Bo", user_id="7"))
    await store.flush()
    await store.aclose()

    store = await SqliteMemory.open(db)  # a new start on the same file
    try:
        ada = viewer_key(chat("x"))
        found = await store.recall("what is my cat called?", 5, ada)
        texts = [m.text for m in found]
        assert texts[0].startswith("About Ada: new today, 3 messages, subscriber for 14 months")
        assert "Ada said: my cat is called Tofu now" in texts
        assert not any("Miso" in t for t in texts)  # superseded
        assert "Ada said: my favourite game is Tetris" in texts
        assert not any("Bo" in t for t in texts)
    finally:
        await store.aclose()


@pytest.mark.model
def test_a_new_process_prompt_for_a_viewer_contains_what_they_said_before(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, model={"id": str(tiny_model_dir), "max_new_tokens": 8},
                          chat={"console": {"enabled": True}}, memory={"embedding_model": "bundled"})

    def chat_once(line: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "runtime.cli", "--config", str(config), "chat"],
                              input=line + "\n", capture_output=True, text=True, cwd=ROOT, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]

    chat_once("my cat is called Miso")
    chat_once("what do you remember about my cat?")
    prompts = [r[0] for r in sqlite3.connect(tmp_path / "omoide.db").execute(
        "select prompt from turns order by started_at")]
    assert len(prompts) == 2
    assert "you said: my cat is called Miso" in prompts[1]
    assert "About you:" in prompts[1]


def test_memory_commands_take_effect(tmp_path, capsys):
    config = write_config(tmp_path)
    db = tmp_path / "omoide.db"

    async def make() -> None:
        store = await SqliteMemory.open(db)
        await store.aclose()

    asyncio.run(make())
    base = ["--config", str(config), "memory"]
    assert main([*base, "add", "The streamer's birthday is in May.", "--pin"]) == 0
    assert main([*base, "add", "Komorebi likes turnips.", "--importance", "0.9"]) == 0
    capsys.readouterr()
    assert main([*base, "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "pinned The streamer's birthday is in May." in listed[0]  # pinned first
    mid = int(listed[1].split()[0])
    assert main([*base, "edit", str(mid), "Komorebi loves turnips."]) == 0
    assert main([*base, "search", "turnips"]) == 0
    assert "Komorebi loves turnips." in capsys.readouterr().out
    assert main([*base, "delete", str(mid)]) == 0
    assert main([*base, "search", "turnips"]) == 0
    assert "(no memories)" in capsys.readouterr().out
    assert main([*base, "delete", "9999"]) == 1
    assert "no memory with id 9999" in capsys.readouterr().err

    async def recalled() -> list[str]:
        store = await SqliteMemory.open(db)
        try:
            return [m.text for m in await store.recall("anything at all", 3)]
        finally:
            await store.aclose()

    assert asyncio.run(recalled()) == ["The streamer's birthday is in May."]  # pinned: always there


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, None])
async def test_a_corrupt_or_foreign_database_is_refused_and_left_untouched(tmp_path, content):
    db = tmp_path / "omoide.db"
    if content is None:  # another program's SQLite database
        other = sqlite3.connect(db)
        other.execute("create table invoices (id integer primary key, amount real)")
        other.execute("insert into invoices values (1, 9.5)")
        other.commit()
        other.close()
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    with pytest.raises(SchemaError, match="left untouched"):
        await SqliteMemory.open(db)
    assert db.read_bytes() == before
    assert not (tmp_path / "omoide.db-wal").exists()
    config = write_config(tmp_path, model={"id": "/nonexistent/model"})
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "runtime.cli", "--config", str(config), "run"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert f"memory.database {db}:" in proc.stderr and "left untouched" in proc.stderr
    assert db.read_bytes() == before


async def test_a_fact_said_again_in_a_later_session_is_approved_where_the_operator_opts_in(tmp_path):
    db = tmp_path / "omoide.db"
    for after_s, earlier_s, expected in ((3600.0, 2 * 3600, "approved"), (3600.0, 60, "pending"),
                                         (0.0, 2 * 3600, "pending")):
        db.unlink(missing_ok=True)
        store = await SqliteMemory.open(db, approve_restated_after_s=after_s)
        await said(store, chat("my cat is called Miso"))
        await store.flush()
        # the first statement was made `earlier_s` ago
        await store.writer.db.execute("UPDATE memories SET created_at = created_at - ?", (earlier_s,))
        await store.writer.db.commit()
        await said(store, chat("hi again! my cat is called Miso"))  # the same fact, said again
        await store.flush()
        await store.aclose()
        [(consent,)] = sqlite3.connect(db).execute("SELECT consent FROM memories").fetchall()
        assert consent == expected, (after_s, earlier_s)
