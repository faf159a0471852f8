"""The local store: one SQLite file (WAL) holding the interaction log and recallable memories.

SqliteMemory implements the MemoryStore port and reflection's log over three parts: the writer
(memory/writer.py: every write, batched, in order, held through a full disk), recall
(memory/recall.py: ranking and the vector index) and the file itself (memory/db.py). Writes and
reads have a connection each (WAL lets them work at once), so a write stalled on a lock or a
slow disk never holds up a turn's recall. An input's
write can be awaited: the director waits for it before a reply starts, so a process killed
mid-reply has already stored everything it received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np

from memory.db import claim, open_async, prepare
from memory.index import VectorIndex
from memory.personal import personal_data
from memory.recall import Encoder, Recall, RecallSettings
from memory.viewers import facts_in
from memory.writer import MAX_PENDING, Writer
from runtime.events import (
    ChatMessage,
    InputEvent,
    InputKind,
    LoggedTurn,
    Memory,
    NewMemory,
    Priority,
    TurnRecord,
    input_text,
    viewer_key,
)
from runtime.ports import Clock

_FORGOTTEN = "SELECT 1 FROM forgotten_viewers WHERE viewer = ?"


log = logging.getLogger(__name__)

class SqliteMemory:
    """Implements the MemoryStore port (and reflection's ReflectionLog)."""

    def __init__(self, path: Path, batch: int = 256, encoder: Callable[[], Encoder] | None = None,
                 settings: RecallSettings = RecallSettings(), clock: Clock | None = None,
                 max_pending: int = MAX_PENDING, approve_restated_after_s: float = 0.0,
                 character: str | None = None) -> None:
        self.path = path
        self.character = character  # whose memories these are: the file is marked hers at start
        # a pending fact the same viewer states again this long after is approved (0: only the operator)
        self.approve_restated_after_s = approve_restated_after_s
        self.batch, self.settings, self.clock, self.max_pending = batch, settings, clock, max_pending
        self._load_encoder = encoder
        self._db: aiosqlite.Connection | None = None  # the writer's
        self._reads: aiosqlite.Connection | None = None  # recall's and history's: never behind a stalled write
        self._writer: Writer | None = None
        self._recall: Recall | None = None

    @classmethod
    async def open(cls, path: Path | str, encoder: Callable[[], Encoder] | None = None,
                   settings: RecallSettings = RecallSettings(), clock: Clock | None = None,
                   approve_restated_after_s: float = 0.0, character: str | None = None) -> SqliteMemory:
        store = cls(Path(path), encoder=encoder, settings=settings, clock=clock,
                    approve_restated_after_s=approve_restated_after_s, character=character)
        await store.start()
        return store

    async def start(self) -> None:
        await asyncio.to_thread(prepare, self.path)
        if self.character is not None:
            await asyncio.to_thread(claim, self.path, self.character)
        self._db = await open_async(self.path)
        self._reads = await open_async(self.path)
        self._writer = Writer(self._db, self.path, self.batch, self.max_pending, self.clock)
        self._writer.start()
        self._recall = Recall(self._reads, self._writer, self.path, self.settings, self._load_encoder)
        self._recall.start()

    async def aclose(self) -> None:
        if self._recall is not None:
            await self._recall.aclose()
        if self._writer is not None:
            await self._writer.aclose()
        for db in (self._reads, self._db):
            if db is not None:
                await db.close()
        self._db = self._reads = None

    @property
    def writer(self) -> Writer:
        assert self._writer is not None, "the store is not open"
        return self._writer

    @property
    def recaller(self) -> Recall:
        assert self._recall is not None, "the store is not open"
        return self._recall

    # what tests and benchmarks look at while the index loads
    @property
    def index(self) -> VectorIndex | None:
        return self.recaller.index

    @property
    def index_ready(self) -> asyncio.Event:
        return self.recaller.index_ready

    # -- the log --------------------------------------------------------------------------------

    def log_input(self, event: InputEvent) -> Awaitable[None]:
        done = self.writer.put(
            "INSERT OR IGNORE INTO inputs (id, kind, source, author, text, priority, logged_at, meta)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event.id, str(event.kind), event.source, event.author, event.text,
             int(event.priority), time.time(), json.dumps(event.meta, default=str)), wait=True)
        assert done is not None
        return done

    def learn(self, event: InputEvent) -> None:
        """What a viewer's chat line teaches: their profile (name, messages, badges), and the facts
        they state about themselves, kept as memories about them; a newer statement about the same
        thing supersedes the older one. Anything else teaches nothing."""
        viewer = viewer_key(event)
        if viewer is None:
            return
        platform, _, user_id = viewer.partition(":")
        m, now = event.meta, time.time()
        self.writer.put(  # nothing about a viewer who asked to be forgotten (omoide memory forget)
            "INSERT INTO viewers (platform, user_id, name, first_seen, last_seen, messages, subscriber,"
            " sub_months, moderator, vip) SELECT ?, ?, ?, ?, ?, 1, ?, ?, ?, ?"
            f" WHERE NOT EXISTS ({_FORGOTTEN})"
            " ON CONFLICT(platform, user_id) DO UPDATE SET name = excluded.name,"
            " last_seen = excluded.last_seen, messages = messages + 1,"
            " subscriber = MAX(subscriber, excluded.subscriber), sub_months = MAX(sub_months, excluded.sub_months),"
            " moderator = MAX(moderator, excluded.moderator), vip = MAX(vip, excluded.vip)",
            (platform, user_id, event.author, now, now, int(bool(m.get("subscriber"))),
             int(m.get("sub_months") or 0), int(bool(m.get("moderator"))), int(bool(m.get("vip"))), viewer))
        # into the weights only with consent: chat's facts wait for the operator; personal data in
        # the line (a fact is cut from it, and may lose the part that gives it away) never
        facts = facts_in(event)
        consent = ("blocked" if facts and personal_data(event.text)
                   else "pending" if m.get("untrusted") else "approved")
        for fact in facts:
            self.writer.put(
                "INSERT OR IGNORE INTO memories (text, source, created_at, kind, viewer, subject, importance, consent)"
                f" SELECT ?, ?, ?, 'fact', ?, ?, 0.6, ? WHERE NOT EXISTS ({_FORGOTTEN})",
                (fact.text, event.source, now, viewer, fact.subject, consent, viewer))
            if consent == "pending" and self.approve_restated_after_s > 0:  # said again, in a later session
                self.writer.put(
                    "UPDATE memories SET consent = 'approved', consented_at = ? WHERE text = ? AND viewer = ?"
                    " AND consent = 'pending' AND created_at <= ?",
                    (now, fact.text, viewer, now - self.approve_restated_after_s))
            self.writer.put(  # a newer statement about the same thing replaces the older
                "UPDATE memories SET superseded_by = (SELECT id FROM memories WHERE text = ?)"
                " WHERE viewer = ? AND subject = ? AND text != ? AND superseded_by IS NULL",
                (fact.text, viewer, fact.subject, fact.text))
            self.recaller.changed()

    async def remember(self, record: TurnRecord) -> None:
        now = time.time()
        self.writer.put(
            "INSERT INTO turns (id, started_at, updated_at, persona, model, adapter, prompt,"
            " messages, recalled, generated_text, spoken_text, status, interrupted_at,"
            " interrupt_reason, moderated, error, timings, false_interruptions, actions, traits)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at, adapter = excluded.adapter,"
            " traits = excluded.traits,"
            " prompt = excluded.prompt, messages = excluded.messages,"
            " recalled = excluded.recalled, generated_text = excluded.generated_text,"
            " spoken_text = excluded.spoken_text, status = excluded.status,"
            " interrupted_at = excluded.interrupted_at,"
            " interrupt_reason = excluded.interrupt_reason, moderated = excluded.moderated,"
            " error = excluded.error, timings = excluded.timings,"
            " false_interruptions = excluded.false_interruptions, actions = excluded.actions",
            (record.turn_id, now, now, record.persona, record.model, record.adapter,
             record.prompt, json.dumps([[m.role, m.content] for m in record.messages]),
             json.dumps(list(record.recalled)), record.generated_text, record.spoken_text,
             str(record.status), record.interrupted_at, record.interrupt_reason,
             json.dumps(list(record.moderated)), record.error, json.dumps(record.timings),
             record.false_interruptions, json.dumps(list(record.actions), ensure_ascii=False),
             json.dumps(record.traits)))
        for event in record.inputs:
            self.writer.put("UPDATE inputs SET turn_id = ? WHERE id = ?", (record.turn_id, event.id))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.writer.flush()

    # -- memories -------------------------------------------------------------------------------

    async def add_memory(self, text: str, source: str, kind: str = "fact", viewer: str | None = None,
                         importance: float = 0.5, pinned: bool = False) -> None:
        """Something the character should be able to recall (a card's lore entry, a fact). Not
        if it is there already, nor if the operator deleted or edited it away (`forgotten`)."""
        self.writer.put(
            "INSERT OR IGNORE INTO memories (text, source, created_at, kind, viewer, importance, pinned)"
            " SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM forgotten WHERE text = ?)",
            (text, source, time.time(), kind, viewer, importance, int(pinned), text))
        self.recaller.changed()

    async def add_embedded(self, texts: Sequence[str], vectors: np.ndarray, source: str,
                           kind: str = "fact", importance: float = 0.5) -> list[int]:
        """Memories whose vectors are already made (an import, a benchmark); their ids, in order."""
        return await self.recaller.add_embedded(texts, vectors, source, kind, importance)

    async def recall(self, text: str, k: int, viewer: str | None = None) -> list[Memory]:
        return await self.recaller.recall(text, k, viewer)

    def recall_ahead(self, text: str) -> None:
        self.recaller.embed_ahead(text)

    async def ranked_by_vector(self, query: np.ndarray, k: int, viewer: str | None = None) -> list[Memory]:
        return await self.recaller.ranked_by_vector(query, k, viewer)

    # -- reflection and history -----------------------------------------------------------------

    async def unreflected(self, limit: int) -> list[LoggedTurn]:
        """Finished turns the character has not reflected on yet, oldest first."""
        assert self._reads is not None
        await self.flush()  # the last turn's record may still be queued
        rows = await self._reads.execute_fetchall("SELECT value FROM state WHERE key = 'reflected_until'")
        until = float(list(rows)[0][0]) if rows else 0.0
        turns = list(await self._reads.execute_fetchall(
            "SELECT id, started_at, spoken_text FROM turns WHERE status IN ('complete', 'interrupted')"
            " AND started_at > ? ORDER BY started_at LIMIT ?", (until, limit)))
        if not turns:
            return []
        inputs: dict[str, list[InputEvent]] = {}
        for row in await self._reads.execute_fetchall(
                "SELECT turn_id, kind, text, source, author, priority, meta FROM inputs"
                f" WHERE turn_id IN ({','.join('?' * len(turns))}) ORDER BY logged_at", [t[0] for t in turns]):
            inputs.setdefault(str(row[0]), []).append(_event(row[1:]))
        return [LoggedTurn(str(t), float(at), input_text(inputs.get(str(t), [])), str(spoken))
                for t, at, spoken in turns]

    async def reflected(self, until: LoggedTurn, memories: Sequence[NewMemory]) -> None:
        """Keep what a reflection made of the turns up to `until`, and that it is done with them.
        Its facts come from chat: like a viewer's own, they go into the weights only with the
        operator's yes, and never with personal data in them."""
        now = time.time()
        for m in memories:
            consent = None if m.kind != "fact" else "blocked" if personal_data(m.text) else "pending"
            self.writer.put(
                "INSERT OR IGNORE INTO memories (text, source, created_at, kind, viewer, importance, source_turns,"
                " consent) VALUES (?, 'reflection', ?, ?, ?, ?, ?, ?)",
                (m.text, now, m.kind, m.viewer, min(max(m.importance, 0.0), 1.0), json.dumps(list(m.source_turns)),
                 consent))
        done = self.writer.put(
            "INSERT INTO state (key, value) VALUES ('reflected_until', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (repr(until.started_at),), wait=True)
        self.recaller.changed()
        assert done is not None
        await done

    async def recent_history(self, limit: int) -> list[ChatMessage]:
        assert self._reads is not None
        turns = await self._reads.execute_fetchall(
            "SELECT id, spoken_text FROM turns WHERE status IN ('complete', 'interrupted')"
            " ORDER BY started_at DESC LIMIT ?", (max(limit, 0),))
        messages: list[ChatMessage] = []
        for turn_id, spoken in reversed(list(turns)):
            rows = await self._reads.execute_fetchall(
                "SELECT kind, text, source, author, priority, meta FROM inputs WHERE turn_id = ?"
                " ORDER BY logged_at", (turn_id,))
            inputs = [_event(r) for r in rows]
            if inputs:
                messages.append(ChatMessage("user", input_text(inputs)))
            if spoken:
                messages.append(ChatMessage("assistant", spoken))
        return messages[-limit:] if limit > 0 else []

    def keep_heard(self, history: Sequence[ChatMessage]) -> None:
        """Keep the conversation as she heard it (with several characters, what the others said
        and the viewers' lines another answered are in no turn of hers): the next start takes it
        up again (`heard`)."""
        value = json.dumps({"at": time.time(), "messages": [[m.role, m.content] for m in history]})
        self.writer.put("INSERT INTO state (key, value) VALUES (?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (HEARD, value))

    async def heard(self, limit: int) -> list[ChatMessage] | None:
        """The conversation `keep_heard` kept, unless she has had turns since (run alone, say):
        None, and `recent_history` rebuilds it from her turns."""
        assert self._reads is not None
        rows = list(await self._reads.execute_fetchall("SELECT value FROM state WHERE key = ?", (HEARD,)))
        if not rows:
            return None
        try:
            kept = json.loads(rows[0][0])
            at, messages = float(kept["at"]), [ChatMessage(str(r), str(c)) for r, c in kept["messages"]]
        except (ValueError, KeyError, TypeError):
            log.warning("the conversation kept in %s is unreadable; rebuilt from the turns", self.path)
            return None
        later = list(await self._reads.execute_fetchall("SELECT count(*) FROM turns WHERE started_at > ?", (at,)))
        if later[0][0]:
            return None
        return messages[-limit:] if limit > 0 else []


HEARD = "heard"  # state key: the conversation as a character of several heard it


def _event(row: Any) -> InputEvent:
    kind, text, source, author, priority, *rest = row
    meta = json.loads(rest[0]) if rest else {}
    return InputEvent(InputKind(kind), text, source, 0.0, author, Priority(priority),
                      meta={"untrusted": True} if meta.get("untrusted") else {})
