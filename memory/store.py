"""The local store: one SQLite file (WAL) holding the interaction log and recallable memories.

All writes go through one writer task that batches whatever is waiting into one transaction.
An input's write can be awaited: the director waits for it before a reply starts, so a process
killed mid-reply has already stored everything it received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from memory.schema import SchemaError, check, migrate
from memory.viewers import facts_in
from runtime.events import (
    ChatMessage,
    InputEvent,
    InputKind,
    Memory,
    Priority,
    TurnRecord,
    input_text,
    viewer_key,
)

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w{2,}")


def fts_query(text: str) -> str:
    """A full-text query matching any word of `text` (quoted: nothing in chat is query syntax)."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:32]
    return " OR ".join(f'"{w}"' for w in words)


@dataclass(slots=True)
class _Write:
    sql: str
    params: tuple[Any, ...]
    done: asyncio.Future[None] | None = None


def connect_sync(path: Path) -> sqlite3.Connection:
    """Open the database for a one-off job (migrations, export), in WAL mode. A file that is not
    an Omoide database raises SchemaError before anything is written to it."""
    conn = sqlite3.connect(path)
    try:
        check(conn)
    except SchemaError:
        conn.close()
        raise
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class SqliteMemory:
    """Implements the MemoryStore port."""

    def __init__(self, path: Path, batch: int = 256) -> None:
        self.path = path
        self.batch = batch
        self._db: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path | str) -> SqliteMemory:
        store = cls(Path(path))
        await store.start()
        return store

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def prepare() -> None:
            conn = connect_sync(self.path)
            try:
                migrate(conn)
                # a turn left "started" was cut by a crash: say so, keep what it had
                conn.execute(
                    "UPDATE turns SET status = 'failed', error = 'process ended mid-turn'"
                    " WHERE status = 'started'"
                )
                conn.commit()
            finally:
                conn.close()

        await asyncio.to_thread(prepare)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: safe against a crash
        await self._db.execute("PRAGMA busy_timeout=5000")
        self._writer = asyncio.create_task(self._write_loop(), name="memory-writer")

    async def aclose(self) -> None:
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
            self._writer = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    # -- writes ---------------------------------------------------------------------------------

    def log_input(self, event: InputEvent) -> Awaitable[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        viewer = viewer_key(event)
        if viewer is not None and not event.meta.get("dropped"):
            self._learn(event, viewer)
        self._queue.put_nowait(
            _Write(
                "INSERT OR IGNORE INTO inputs (id, kind, source, author, text, priority, logged_at, meta)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.id, str(event.kind), event.source, event.author, event.text,
                 int(event.priority), time.time(), json.dumps(event.meta, default=str)),
                done,
            )
        )
        return done

    async def remember(self, record: TurnRecord) -> None:
        now = time.time()
        self._queue.put_nowait(
            _Write(
                "INSERT INTO turns (id, started_at, updated_at, persona, model, adapter, prompt,"
                " messages, recalled, generated_text, spoken_text, status, interrupted_at,"
                " interrupt_reason, moderated, error, timings, false_interruptions)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at,"
                " prompt = excluded.prompt, messages = excluded.messages,"
                " recalled = excluded.recalled, generated_text = excluded.generated_text,"
                " spoken_text = excluded.spoken_text, status = excluded.status,"
                " interrupted_at = excluded.interrupted_at,"
                " interrupt_reason = excluded.interrupt_reason, moderated = excluded.moderated,"
                " error = excluded.error, timings = excluded.timings,"
                " false_interruptions = excluded.false_interruptions",
                (record.turn_id, now, now, record.persona, record.model, record.adapter,
                 record.prompt, json.dumps([[m.role, m.content] for m in record.messages]),
                 json.dumps(list(record.recalled)), record.generated_text, record.spoken_text,
                 str(record.status), record.interrupted_at, record.interrupt_reason,
                 json.dumps(list(record.moderated)), record.error, json.dumps(record.timings),
                 record.false_interruptions),
            )
        )
        for event in record.inputs:
            self._queue.put_nowait(
                _Write("UPDATE inputs SET turn_id = ? WHERE id = ?", (record.turn_id, event.id))
            )

    def _learn(self, event: InputEvent, viewer: str) -> None:
        """Update the viewer's profile, and keep the facts they state about themselves."""
        platform, _, user_id = viewer.partition(":")
        m, now = event.meta, time.time()
        self._queue.put_nowait(_Write(
            "INSERT INTO viewers (platform, user_id, name, first_seen, last_seen, messages, subscriber,"
            " sub_months, moderator, vip) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)"
            " ON CONFLICT(platform, user_id) DO UPDATE SET name = excluded.name,"
            " last_seen = excluded.last_seen, messages = messages + 1,"
            " subscriber = MAX(subscriber, excluded.subscriber), sub_months = MAX(sub_months, excluded.sub_months),"
            " moderator = MAX(moderator, excluded.moderator), vip = MAX(vip, excluded.vip)",
            (platform, user_id, event.author, now, now, int(bool(m.get("subscriber"))),
             int(m.get("sub_months") or 0), int(bool(m.get("moderator"))), int(bool(m.get("vip")))),
        ))
        for fact in facts_in(event):
            self._queue.put_nowait(_Write(
                "INSERT OR IGNORE INTO memories (text, source, created_at, kind, viewer, subject, importance)"
                " VALUES (?, ?, ?, 'fact', ?, ?, 0.6)", (fact.text, event.source, now, viewer, fact.subject)))
            self._queue.put_nowait(_Write(  # a newer statement about the same thing replaces the older
                "UPDATE memories SET superseded_by = (SELECT id FROM memories WHERE text = ?)"
                " WHERE viewer = ? AND subject = ? AND text != ? AND superseded_by IS NULL",
                (fact.text, viewer, fact.subject, fact.text)))

    async def add_memory(self, text: str, source: str, kind: str = "fact", viewer: str | None = None,
                         importance: float = 0.5, pinned: bool = False) -> None:
        """Something the character should be able to recall (a card's lore entry, a fact)."""
        self._queue.put_nowait(
            _Write(
                "INSERT OR IGNORE INTO memories (text, source, created_at, kind, viewer, importance, pinned)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (text, source, time.time(), kind, viewer, importance, int(pinned)),
            )
        )

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write("SELECT 1", (), done))
        await done

    async def _write_loop(self) -> None:
        assert self._db is not None
        stopping = False
        while not stopping:
            items = [await self._queue.get()]
            while len(items) < self.batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            if None in items:
                stopping = True
            writes = [w for w in items if w is not None]
            if not writes:
                continue
            try:
                for w in writes:
                    await self._db.execute(w.sql, w.params)
                await self._db.commit()
            except sqlite3.Error as exc:
                # fail loudly for the writes that awaited, keep the writer alive for the rest
                log.exception("database write failed", extra={"database": str(self.path)})
                await self._db.rollback()
                for w in writes:
                    if w.done is not None and not w.done.done():
                        w.done.set_exception(exc)
                continue
            for w in writes:
                if w.done is not None and not w.done.done():
                    w.done.set_result(None)

    # -- reads ----------------------------------------------------------------------------------

    async def recall(self, text: str, k: int, viewer: str | None = None) -> list[Memory]:
        """The viewer's profile and facts first, then pinned memories, then full-text matches."""
        if k <= 0:
            return []
        assert self._db is not None
        found: list[Memory] = []
        if viewer is not None:
            profile = await self._profile(viewer)
            if profile is not None:
                found.append(profile)
            rows = await self._db.execute_fetchall(
                "SELECT id, text, importance FROM memories WHERE viewer = ? AND superseded_by IS NULL"
                " ORDER BY created_at DESC LIMIT ?", (viewer, k))
            found += [Memory(int(r[0]), str(r[1]), float(r[2])) for r in rows]
        rows = await self._db.execute_fetchall(
            "SELECT id, text, importance FROM memories WHERE pinned = 1 AND superseded_by IS NULL"
            " ORDER BY importance DESC LIMIT ?", (k,))
        found += [Memory(int(r[0]), str(r[1]), float(r[2])) for r in rows]
        query = fts_query(text)
        if query:
            rows = await self._db.execute_fetchall(
                "SELECT m.id, m.text, bm25(memories_fts) AS score FROM memories_fts"
                " JOIN memories m ON m.id = memories_fts.rowid"
                " WHERE memories_fts MATCH ? AND m.superseded_by IS NULL ORDER BY score LIMIT ?",
                (query, k),
            )
            found += [Memory(int(r[0]), str(r[1]), -float(r[2])) for r in rows]
        unique: dict[int, Memory] = {}
        for m in found:
            unique.setdefault(m.id, m)  # first mention wins, in order
        return list(unique.values())[: k + (1 if viewer is not None else 0)]

    async def _profile(self, viewer: str) -> Memory | None:
        assert self._db is not None
        platform, _, user_id = viewer.partition(":")
        rows = await self._db.execute_fetchall(
            "SELECT name, first_seen, messages, subscriber, sub_months, moderator, vip, notes FROM viewers"
            " WHERE platform = ? AND user_id = ?", (platform, user_id))
        if not rows:
            return None
        name, first_seen, messages, sub, months, mod, vip, notes = list(rows)[0]
        days = int((time.time() - float(first_seen)) // 86400)
        parts = [f"About {name}: chatting for {days} days" if days else f"About {name}: new today",
                 f"{messages} message{'' if messages == 1 else 's'}"]
        if sub:
            parts.append(f"subscriber for {months} months" if months else "subscriber")
        if mod:
            parts.append("a moderator")
        if vip:
            parts.append("a VIP")
        text = ", ".join(parts) + "." + (f" Notes: {notes}" if notes else "")
        return Memory(0, text, 1.0)

    async def recent_history(self, limit: int) -> list[ChatMessage]:
        assert self._db is not None
        turns = await self._db.execute_fetchall(
            "SELECT id, spoken_text FROM turns WHERE status IN ('complete', 'interrupted')"
            " ORDER BY started_at DESC LIMIT ?",
            (max(limit, 0),),
        )
        messages: list[ChatMessage] = []
        for turn_id, spoken in reversed(list(turns)):
            rows = await self._db.execute_fetchall(
                "SELECT kind, text, source, author, priority FROM inputs WHERE turn_id = ?"
                " ORDER BY logged_at",
                (turn_id,),
            )
            inputs = [_event(r) for r in rows]
            if inputs:
                messages.append(ChatMessage("user", input_text(inputs)))
            if spoken:
                messages.append(ChatMessage("assistant", spoken))
        return messages[-limit:] if limit > 0 else []


def _event(row: Any) -> InputEvent:
    kind, text, source, author, priority = row
    return InputEvent(InputKind(kind), text, source, 0.0, author, Priority(priority))
