"""The local store: one SQLite file (WAL) holding the interaction log and recallable memories.

All writes go through one writer task that batches whatever is waiting into one transaction.
An input's write can be awaited: the director waits for it before a reply starts, so a process
killed mid-reply has already stored everything it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import numpy as np

from memory.index import IVF_MIN, VectorIndex, pack, unpack
from memory.schema import SchemaError, check, migrate
from memory.viewers import facts_in
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

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w{2,}")


def fts_query(text: str) -> str:
    """A full-text query matching any word of `text` (quoted: nothing in chat is query syntax)."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:32]
    return " OR ".join(f'"{w}"' for w in words)


RESTATED = 0.95  # cosine at which a reflection says the same as an older memory


@dataclass(frozen=True, slots=True, kw_only=True)
class RecallSettings:
    """How recall ranks memories: similarity to what was said, plus a bonus for recent ones,
    important ones and ones about the viewer who is speaking."""

    recency_weight: float = 0.1
    recency_half_life_days: float = 30.0
    importance_weight: float = 0.1
    viewer_weight: float = 0.1
    min_similarity: float = 0.3  # below this a memory is not brought up (unless it is the viewer's)
    viewer_facts: int = 200  # the newest facts of the speaking viewer considered each turn


class Encoder(Protocol):
    """What the store needs of an embedding model (memory.embed.Embedder)."""

    name: str
    dim: int

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray: ...


@dataclass(slots=True)
class _Write:
    sql: str
    params: tuple[Any, ...] | list[tuple[Any, ...]]  # a list: executemany
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


@contextlib.contextmanager
def session(database: Path, what: str = "memory database") -> Iterator[sqlite3.Connection]:
    """The database for a one-off job (the memory and logs commands, exports), migrated; one
    transaction, committed on success; closed after."""
    if not database.exists():
        raise FileNotFoundError(f"no {what} at {database}")
    conn = connect_sync(database)
    try:
        migrate(conn)
        with conn:
            yield conn
    finally:
        conn.close()


MAX_HELD = 100_000  # writes kept in memory while the disk is full


class StoreFull(sqlite3.OperationalError):
    """A write could not be stored yet (the disk is full); it is held and retried."""


class SqliteMemory:
    """Implements the MemoryStore port."""

    def __init__(self, path: Path, batch: int = 256, encoder: Callable[[], Encoder] | None = None,
                 settings: RecallSettings = RecallSettings()) -> None:
        self.path = path
        self.batch = batch
        self.settings = settings
        self._load_encoder = encoder
        self.encoder: Encoder | None = None
        self.index: VectorIndex | None = None
        self._db: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._held: list[_Write] = []  # writes waiting for disk space (never dropped below MAX_HELD)
        self._full_since: float | None = None
        self._full_wait = 0.0
        self._indexer: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()  # new memories to embed
        self._bulk = 0  # add_embedded writes in flight
        self.index_ready = asyncio.Event()  # set once recall can use vectors (never without an encoder)

    @classmethod
    async def open(cls, path: Path | str, encoder: Callable[[], Encoder] | None = None,
                   settings: RecallSettings = RecallSettings()) -> SqliteMemory:
        store = cls(Path(path), encoder=encoder, settings=settings)
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
        if self._load_encoder is not None:
            self._indexer = asyncio.create_task(self._index_loop(), name="memory-indexer")

    async def aclose(self) -> None:
        if self._indexer is not None:
            self._indexer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._indexer
            self._indexer = None
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
                " interrupt_reason, moderated, error, timings, false_interruptions, actions)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at, adapter = excluded.adapter,"
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
                 record.false_interruptions, json.dumps(list(record.actions), ensure_ascii=False)),
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
            self._dirty.set()

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
        self._dirty.set()

    async def add_embedded(self, texts: Sequence[str], vectors: np.ndarray, source: str,
                           kind: str = "fact", importance: float = 0.5) -> list[int]:
        """Memories whose vectors are already made (an import, a benchmark): written in one
        transaction with their vectors and indexed at once. Returns their ids, in order."""
        if self._load_encoder is not None:
            await self.index_ready.wait()
        assert self._db is not None
        encoder = self.encoder
        if encoder is None or self.index is None:
            raise RuntimeError("no embedding model: set memory.embedding_model")
        if len(texts) != len(vectors) or vectors.shape[1] != encoder.dim:
            raise ValueError(f"need one {encoder.dim}-dimensional vector per text")
        now = time.time()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._bulk += 1  # the indexer would see the rows before their vectors (same connection)
        try:
            self._queue.put_nowait(_Write(
                "INSERT OR IGNORE INTO memories (text, source, created_at, kind, importance) VALUES (?, ?, ?, ?, ?)",
                [(t, source, now, kind, importance) for t in texts]))
            self._queue.put_nowait(_Write(
                "INSERT OR REPLACE INTO memory_vectors (memory_id, model, vector)"
                " SELECT id, ?, ? FROM memories WHERE text = ?",
                [(encoder.name, pack(v), t) for t, v in zip(texts, vectors, strict=True)], done))
            await done
        finally:
            self._bulk -= 1
            self._dirty.set()
        ids: dict[str, int] = {}
        for start in range(0, len(texts), 500):
            chunk = list(texts[start:start + 500])
            rows = await self._db.execute_fetchall(
                f"SELECT id, text FROM memories WHERE text IN ({','.join('?' * len(chunk))})", chunk)
            ids.update((str(t), int(i)) for i, t in rows)
        order = [ids[t] for t in texts]
        await asyncio.to_thread(self.index.add, order, vectors)
        return order

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write("SELECT 1", (), done))
        await done

    async def _write_loop(self) -> None:  # noqa: C901 (the writer: batching, the full-disk hold and shutdown in one loop (issue 18 splits it))
        assert self._db is not None
        stopping = False
        while not stopping:
            # held writes (the disk was full) are tried again without waiting for new ones
            items = [] if self._held and self._queue.empty() else [await self._queue.get()]
            while len(items) < self.batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            if None in items:
                stopping = True
            writes = self._held + [w for w in items if w is not None]
            self._held = []
            if not writes:
                continue
            try:
                for w in writes:
                    if isinstance(w.params, list):
                        await self._db.executemany(w.sql, w.params)
                    else:
                        await self._db.execute(w.sql, w.params)
                await self._db.commit()
            except sqlite3.Error as exc:
                await self._db.rollback()
                if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" and not stopping:
                    await self._hold(writes, exc)  # the disk is full: keep them, try again
                    continue
                # fail loudly for the writes that awaited, keep the writer alive for the rest
                log.exception("database write failed", extra={"database": str(self.path)})
                for w in writes:
                    if w.done is not None and not w.done.done():
                        w.done.set_exception(exc)
                continue
            if self._full_since is not None:
                log.warning("the database is writable again: everything held is stored",
                            extra={"database": str(self.path), "writes": len(writes)})
                self._full_since, self._full_wait = None, 0.0
            for w in writes:
                if w.done is not None and not w.done.done():
                    w.done.set_result(None)

    async def _hold(self, writes: list[_Write], exc: sqlite3.Error) -> None:
        """The disk is full: keep the writes in memory (up to MAX_HELD) and retry with a backoff.
        Whoever awaits one hears at once that it is not stored yet, so nothing stalls; the write
        itself is kept and committed once there is room."""
        if self._full_since is None:
            self._full_since = time.monotonic()
            log.error("the disk is full: writes are held in memory and retried; free some space",
                      extra={"database": str(self.path), "error": str(exc)})
        for w in writes:
            if w.done is not None and not w.done.done():
                w.done.set_exception(StoreFull(f"not stored yet: {exc}"))
        if len(writes) > MAX_HELD:
            log.error("too many writes held while the disk is full: the oldest are dropped",
                      extra={"dropped": len(writes) - MAX_HELD})
            writes = writes[-MAX_HELD:]
        self._held = writes
        self._full_wait = min(max(self._full_wait * 2, 0.5), 30.0)
        await asyncio.sleep(self._full_wait)

    # -- reads ----------------------------------------------------------------------------------

    async def recall(self, text: str, k: int, viewer: str | None = None) -> list[Memory]:
        """The viewer's profile first, then pinned memories, then the k best by rank: similarity to
        `text`, recency, importance, and whether they are about this viewer. Without vectors (no
        encoder, or it is still loading) full-text matches stand in for similarity."""
        if k <= 0:
            return []
        assert self._db is not None
        found: list[Memory] = []
        if viewer is not None:
            profile = await self._profile(viewer)
            if profile is not None:
                found.append(profile)
        pinned = await self._rows("pinned = 1 AND superseded_by IS NULL ORDER BY importance DESC LIMIT ?", (k,))
        found += [Memory(r.id, r.text, 1.0) for r in pinned]
        ranked = await (self._ranked(text, k, viewer) if self.index_ready.is_set()
                        else self._ranked_by_words(text, k, viewer))
        unique: dict[int, Memory] = {}
        for m in found + ranked:
            unique.setdefault(m.id, m)  # first mention wins, in order
        return list(unique.values())[: k + (1 if viewer is not None else 0)]

    async def _ranked(self, text: str, k: int, viewer: str | None) -> list[Memory]:
        assert self.encoder is not None
        query = await asyncio.to_thread(self.encoder.encode, [text])
        return await self.ranked_by_vector(query[0], k, viewer)

    async def ranked_by_vector(self, query: np.ndarray, k: int, viewer: str | None = None) -> list[Memory]:
        """Recall's ranking for a query vector already made (`recall` embeds the text first)."""
        assert self.index is not None
        index, s = self.index, self.settings
        # a small index answers in about a millisecond: not worth a thread hop. A large one may be
        # busy building its inverted file (seconds, under its lock): never wait for it on the loop.
        large = len(index) >= 0.9 * IVF_MIN

        async def call(fn: Callable[..., Any], *args: Any) -> Any:
            return await asyncio.to_thread(fn, *args) if large else fn(*args)

        sims = dict(await call(index.search, query, 4 * k))
        rows = await self._rows(f"id IN ({','.join('?' * len(sims))}) AND superseded_by IS NULL",
                                tuple(sims)) if sims else []
        stale = set(sims) - {r.id for r in rows}
        if stale:  # deleted or superseded since they were indexed
            await call(index.remove, list(stale))
        if viewer is not None:
            own = await self._rows("viewer = ? AND superseded_by IS NULL ORDER BY created_at DESC LIMIT ?",
                                   (viewer, s.viewer_facts))
            sims.update(await call(index.similarity, [r.id for r in own if r.id not in sims], query))
            have = {r.id for r in rows}
            rows += [r for r in own if r.id not in have]
        now = time.time()
        scored = []
        for r in rows:
            sim = sims.get(r.id)
            if sim is None:  # not embedded yet (just written): only the viewer's own come up
                if r.viewer != viewer:
                    continue
                sim = s.min_similarity
            mine = viewer is not None and r.viewer == viewer
            if sim < s.min_similarity and not mine:
                continue
            age_days = max(now - r.created_at, 0.0) / 86400
            score = (sim + s.recency_weight * math.exp(-age_days * math.log(2) / s.recency_half_life_days)
                     + s.importance_weight * r.importance + (s.viewer_weight if mine else 0.0))
            scored.append(Memory(r.id, r.text, score))
        scored.sort(key=lambda m: -m.score)
        return scored[:k]

    async def _ranked_by_words(self, text: str, k: int, viewer: str | None) -> list[Memory]:
        """Before vectors: the viewer's newest facts, then full-text matches."""
        assert self._db is not None
        found: list[Memory] = []
        if viewer is not None:
            own = await self._rows("viewer = ? AND superseded_by IS NULL ORDER BY created_at DESC LIMIT ?",
                                   (viewer, k))
            found += [Memory(r.id, r.text, r.importance) for r in own]
        query = fts_query(text)
        if query:
            rows = await self._db.execute_fetchall(
                "SELECT m.id, m.text, bm25(memories_fts) AS score FROM memories_fts"
                " JOIN memories m ON m.id = memories_fts.rowid"
                " WHERE memories_fts MATCH ? AND m.superseded_by IS NULL ORDER BY score LIMIT ?",
                (query, k),
            )
            found += [Memory(int(r[0]), str(r[1]), -float(r[2])) for r in rows]
        return found

    async def _rows(self, where: str, args: tuple[Any, ...]) -> list[_Row]:
        assert self._db is not None
        rows = await self._db.execute_fetchall(
            f"SELECT id, text, importance, created_at, viewer FROM memories WHERE {where}", args)
        return [_Row(int(r[0]), str(r[1]), float(r[2]), float(r[3]), r[4]) for r in rows]

    # -- the vector index -----------------------------------------------------------------------

    async def _index_loop(self) -> None:
        """Load the encoder and the stored vectors, then embed whatever has none, for as long as
        the store is open. Memories written by another process (the memory commands) are seen
        through PRAGMA data_version."""
        assert self._load_encoder is not None and self._db is not None
        try:
            self.encoder = encoder = await asyncio.to_thread(self._load_encoder)
        except Exception:  # noqa: BLE001 - recall goes on by words
            log.exception("embedding model failed to load; recall uses full-text matching only")
            return
        self.index = index = VectorIndex(encoder.dim)
        loaded = await asyncio.to_thread(self._load_vectors, index, encoder)
        log.info("memory index ready", extra={"memories": loaded, "model": encoder.name,
                                              "ram_mb": round(index.nbytes / 1e6, 1)})
        self.index_ready.set()
        seen_version, after = None, 0
        while True:
            self._dirty.clear()
            try:
                (version,) = list(await self._db.execute_fetchall("PRAGMA data_version"))[0]
                if version != seen_version:  # another connection wrote: look at everything again
                    seen_version, after = version, 0
                after = await self._embed_missing(after)
            except Exception:  # noqa: BLE001 - recall goes on with what is indexed; try again soon
                log.exception("embedding new memories failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=2.0)

    def _load_vectors(self, index: VectorIndex, encoder: Encoder) -> int:
        conn = sqlite3.connect(self.path)
        try:
            cur = conn.execute(
                "SELECT v.memory_id, v.vector FROM memory_vectors v JOIN memories m ON m.id = v.memory_id"
                " WHERE v.model = ? AND m.superseded_by IS NULL", (encoder.name,))
            total = 0
            while batch := cur.fetchmany(50_000):
                vecs, scale = unpack([b for _, b in batch], encoder.dim)
                index.add([i for i, _ in batch], vecs, scale)
                total += len(batch)
            return total
        finally:
            conn.close()

    async def _embed_missing(self, after: int) -> int:
        """Embed live memories with an id above `after` that have no vector from this encoder;
        returns the highest id looked at."""
        assert self._db is not None and self.encoder is not None and self.index is not None
        encoder, index = self.encoder, self.index
        while True:
            if self._bulk:  # add_embedded wakes us when it is done
                return after
            rows = list(await self._db.execute_fetchall(
                "SELECT m.id, m.text, m.source FROM memories m LEFT JOIN memory_vectors v"
                " ON v.memory_id = m.id AND v.model = ? WHERE m.id > ? AND v.memory_id IS NULL"
                " AND m.superseded_by IS NULL ORDER BY m.id LIMIT 256", (encoder.name, after)))
            if not rows:
                return after
            ids, texts = [int(r[0]) for r in rows], [str(r[1]) for r in rows]
            # a few at a time: a turn's query waits for the model at most one small batch (~30 ms)
            vectors = np.concatenate([await asyncio.to_thread(encoder.encode, texts[i:i + 16])
                                      for i in range(0, len(texts), 16)])
            for memory_id, vector, source in zip(ids, vectors, (r[2] for r in rows), strict=True):
                if source == "reflection":  # said again in other words: the newer one stays
                    await self._restated(memory_id, vector)
            await asyncio.to_thread(index.add, ids, vectors)  # may build the inverted file: seconds
            for memory_id, text, vector in zip(ids, texts, vectors, strict=True):
                self._queue.put_nowait(_Write(  # only if the text is still the one embedded
                    "INSERT OR REPLACE INTO memory_vectors (memory_id, model, vector)"
                    " SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM memories WHERE id = ? AND text = ?)",
                    (memory_id, encoder.name, pack(vector), memory_id, text)))
            after = ids[-1]

    async def _restated(self, memory_id: int, vector: np.ndarray) -> None:
        """A reflection that says again what an older memory says (cosine >= RESTATED)
        supersedes it, so repeated reflections do not pile up. Contradictions are not caught
        this way: "Ada's cat is Miso" / "Bo's cat is Miso" are as close as "... Miso" / "... Tofu"."""
        assert self.index is not None
        hits = await asyncio.to_thread(self.index.search, vector, 3)
        older = [m for m, sim in hits if sim >= RESTATED and m < memory_id]
        for m in older:
            self._queue.put_nowait(_Write(
                "UPDATE memories SET superseded_by = ? WHERE id = ? AND superseded_by IS NULL AND pinned = 0",
                (memory_id, m)))  # and recall drops it from the index when it next comes up

    # -- reflection -----------------------------------------------------------------------------

    async def unreflected(self, limit: int) -> list[LoggedTurn]:
        """Finished turns the character has not reflected on yet, oldest first."""
        assert self._db is not None
        await self.flush()  # the last turn's record may still be queued
        rows = await self._db.execute_fetchall("SELECT value FROM state WHERE key = 'reflected_until'")
        until = float(list(rows)[0][0]) if rows else 0.0
        turns = list(await self._db.execute_fetchall(
            "SELECT id, started_at, spoken_text FROM turns WHERE status IN ('complete', 'interrupted')"
            " AND started_at > ? ORDER BY started_at LIMIT ?", (until, limit)))
        if not turns:
            return []
        inputs: dict[str, list[InputEvent]] = {}
        for row in await self._db.execute_fetchall(
                "SELECT turn_id, kind, text, source, author, priority, meta FROM inputs"
                f" WHERE turn_id IN ({','.join('?' * len(turns))}) ORDER BY logged_at", [t[0] for t in turns]):
            inputs.setdefault(str(row[0]), []).append(_event(row[1:]))
        return [LoggedTurn(str(t), float(at), input_text(inputs.get(str(t), [])), str(spoken))
                for t, at, spoken in turns]

    async def reflected(self, until: LoggedTurn, memories: Sequence[NewMemory]) -> None:
        """Keep what a reflection made of the turns up to `until`, and that it is done with them."""
        now = time.time()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for m in memories:
            self._queue.put_nowait(_Write(
                "INSERT OR IGNORE INTO memories (text, source, created_at, kind, viewer, importance, source_turns)"
                " VALUES (?, 'reflection', ?, ?, ?, ?, ?)",
                (m.text, now, m.kind, m.viewer, min(max(m.importance, 0.0), 1.0), json.dumps(list(m.source_turns)))))
        self._queue.put_nowait(_Write(
            "INSERT INTO state (key, value) VALUES ('reflected_until', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (repr(until.started_at),), done))
        self._dirty.set()
        await done

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
                "SELECT kind, text, source, author, priority, meta FROM inputs WHERE turn_id = ?"
                " ORDER BY logged_at",
                (turn_id,),
            )
            inputs = [_event(r) for r in rows]
            if inputs:
                messages.append(ChatMessage("user", input_text(inputs)))
            if spoken:
                messages.append(ChatMessage("assistant", spoken))
        return messages[-limit:] if limit > 0 else []


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    text: str
    importance: float
    created_at: float
    viewer: str | None


def _event(row: Any) -> InputEvent:
    kind, text, source, author, priority, *rest = row
    meta = json.loads(rest[0]) if rest else {}
    return InputEvent(InputKind(kind), text, source, 0.0, author, Priority(priority),
                      meta={"untrusted": True} if meta.get("untrusted") else {})
