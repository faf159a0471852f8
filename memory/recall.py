"""Recall: which memories a turn brings up, and the vector index that ranks them by meaning.

The index loop loads the embedding model in the background, then the stored vectors, then embeds
whatever has none, for as long as the store is open; until the model is there, full-text matches
stand in for similarity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import numpy as np

from memory.index import IVF_MIN, VectorIndex, pack, unpack
from memory.writer import Writer
from runtime.events import Memory
from runtime.ports import cancel_and_wait

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w{2,}")
RESTATED = 0.95  # cosine at which a reflection says the same as an older memory


def fts_query(text: str) -> str:
    """A full-text query matching any word of `text` (quoted: nothing in chat is query syntax)."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:32]
    return " OR ".join(f'"{w}"' for w in words)


AHEAD = 16  # queries embedded ahead and kept until recall asks for them


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
    """What recall needs of an embedding model (memory.embed.Embedder)."""

    name: str
    dim: int

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    text: str
    importance: float
    created_at: float
    viewer: str | None


class Recall:
    """Ranking and the vector index of one open store (memory.store.SqliteMemory)."""

    def __init__(self, db: aiosqlite.Connection, writer: Writer, path: Path, settings: RecallSettings,
                 encoder: Callable[[], Encoder] | None) -> None:
        self.db, self.writer, self.path, self.settings = db, writer, path, settings
        self._load_encoder = encoder
        self.encoder: Encoder | None = None
        self.index: VectorIndex | None = None
        self.index_ready = asyncio.Event()  # set once recall can use vectors (never without an encoder)
        self._dirty = asyncio.Event()  # new memories to embed
        self._bulk = 0  # add_embedded writes in flight
        self._task: asyncio.Task[None] | None = None
        self._ahead: dict[str, asyncio.Future[np.ndarray]] = {}  # query text -> its vector, being made

    def start(self) -> None:
        if self._load_encoder is not None:
            self._task = asyncio.create_task(self._index_loop(), name="memory-indexer")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def changed(self) -> None:
        """Memories were written: embed them soon."""
        self._dirty.set()

    async def recall(self, text: str, k: int, viewer: str | None = None) -> list[Memory]:
        """The viewer's profile first, then pinned memories, then the k best by rank: similarity to
        `text`, recency, importance, and whether they are about this viewer. Without vectors (no
        encoder, or it is still loading) full-text matches stand in for similarity. The query's
        vector is made (or was started as the input arrived: `embed_ahead`) while the rows that do
        not depend on it are read: the reads wait beside the embedding, not after it."""
        if k <= 0:
            return []
        query = self._query(text) if self.index_ready.is_set() else None
        try:
            found: list[Memory] = []
            if viewer is not None:
                profile = await self._profile(viewer)
                if profile is not None:
                    found.append(profile)
            pinned = await self._rows("pinned = 1 AND superseded_by IS NULL ORDER BY importance DESC LIMIT ?", (k,))
            found += [Memory(r.id, r.text, 1.0) for r in pinned]
            if query is None:
                ranked = await self._ranked_by_words(text, k, viewer)
            else:
                own = await self._own(viewer) if viewer is not None else None
                ranked = await self.ranked_by_vector(await query, k, viewer, own)
        finally:
            if query is not None and not query.done():
                query.cancel()  # recall failed first: the vector is not wanted
        unique: dict[int, Memory] = {}
        for m in found + ranked:
            unique.setdefault(m.id, m)  # first mention wins, in order
        return list(unique.values())[: k + (1 if viewer is not None else 0)]

    def embed_ahead(self, text: str) -> None:
        """Start embedding a query recall will be asked soon (an input as it arrives), so the
        embedding is not on the way to the reply's first token. The last few are kept."""
        if self.encoder is None or not self.index_ready.is_set() or text in self._ahead:
            return
        self._ahead[text] = self._embedding(text)
        while len(self._ahead) > AHEAD:
            stale = self._ahead.pop(next(iter(self._ahead)))
            stale.cancel()  # not started yet: never made; made: dropped

    def _embedding(self, text: str) -> asyncio.Future[np.ndarray]:
        encoder = self.encoder
        assert encoder is not None
        return asyncio.get_running_loop().run_in_executor(None, lambda: encoder.encode([text])[0])

    def _query(self, text: str) -> asyncio.Future[np.ndarray]:
        """The query's vector: the one started as the input arrived, or one started now."""
        ahead = self._ahead.pop(text, None)
        return ahead if ahead is not None else self._embedding(text)

    async def _own(self, viewer: str) -> list[_Row]:
        """The speaking viewer's newest facts (at most `viewer_facts`)."""
        return await self._rows("viewer = ? AND superseded_by IS NULL ORDER BY created_at DESC LIMIT ?",
                                (viewer, self.settings.viewer_facts))

    async def ranked_by_vector(self, query: np.ndarray, k: int, viewer: str | None = None,
                               own: list[_Row] | None = None) -> list[Memory]:
        """Recall's ranking for a query vector already made (`recall` embeds the text first; it
        hands in the viewer's own facts, read while the vector was made)."""
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
            if own is None:
                own = await self._own(viewer)
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
        found: list[Memory] = []
        if viewer is not None:
            own = await self._rows("viewer = ? AND superseded_by IS NULL ORDER BY created_at DESC LIMIT ?",
                                   (viewer, k))
            found += [Memory(r.id, r.text, r.importance) for r in own]
        query = fts_query(text)
        if query:
            rows = await self.db.execute_fetchall(
                "SELECT m.id, m.text, bm25(memories_fts) AS score FROM memories_fts"
                " JOIN memories m ON m.id = memories_fts.rowid"
                " WHERE memories_fts MATCH ? AND m.superseded_by IS NULL ORDER BY score LIMIT ?",
                (query, k),
            )
            found += [Memory(int(r[0]), str(r[1]), -float(r[2])) for r in rows]
        return found

    async def _rows(self, where: str, args: tuple[Any, ...]) -> list[_Row]:
        rows = await self.db.execute_fetchall(
            f"SELECT id, text, importance, created_at, viewer FROM memories WHERE {where}", args)
        return [_Row(int(r[0]), str(r[1]), float(r[2]), float(r[3]), r[4]) for r in rows]

    async def _profile(self, viewer: str) -> Memory | None:
        platform, _, user_id = viewer.partition(":")
        rows = await self.db.execute_fetchall(
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

    # -- the vector index -----------------------------------------------------------------------

    async def add_embedded(self, texts: Sequence[str], vectors: np.ndarray, source: str,
                           kind: str = "fact", importance: float = 0.5) -> list[int]:
        """Memories whose vectors are already made (an import, a benchmark): written in one
        transaction with their vectors and indexed at once. Returns their ids, in order."""
        if self._load_encoder is not None:
            await self.index_ready.wait()
        encoder = self.encoder
        if encoder is None or self.index is None:
            raise RuntimeError("no embedding model: set memory.embedding_model")
        if len(texts) != len(vectors) or vectors.shape[1] != encoder.dim:
            raise ValueError(f"need one {encoder.dim}-dimensional vector per text")
        now = time.time()
        self._bulk += 1  # the indexer would see the rows before their vectors (same connection)
        try:
            self.writer.put("INSERT OR IGNORE INTO memories (text, source, created_at, kind, importance)"
                            " VALUES (?, ?, ?, ?, ?)", [(t, source, now, kind, importance) for t in texts])
            done = self.writer.put(
                "INSERT OR REPLACE INTO memory_vectors (memory_id, model, vector)"
                " SELECT id, ?, ? FROM memories WHERE text = ?",
                [(encoder.name, pack(v), t) for t, v in zip(texts, vectors, strict=True)], wait=True)
            assert done is not None
            await done
        finally:
            self._bulk -= 1
            self._dirty.set()
        ids: dict[str, int] = {}
        for start in range(0, len(texts), 500):
            chunk = list(texts[start:start + 500])
            rows = await self.db.execute_fetchall(
                f"SELECT id, text FROM memories WHERE text IN ({','.join('?' * len(chunk))})", chunk)
            ids.update((str(t), int(i)) for i, t in rows)
        order = [ids[t] for t in texts]
        await asyncio.to_thread(self.index.add, order, vectors)
        return order

    async def _index_loop(self) -> None:
        """Load the encoder and the stored vectors, then embed whatever has none, for as long as
        the store is open. Memories written by another process (the memory commands) are seen
        through PRAGMA data_version."""
        assert self._load_encoder is not None
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
                # asked of the writer's connection: it changes when another process writes, not us
                (version,) = list(await self.writer.db.execute_fetchall("PRAGMA data_version"))[0]
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
        assert self.encoder is not None and self.index is not None
        encoder, index = self.encoder, self.index
        while True:
            if self._bulk:  # add_embedded wakes us when it is done
                return after
            rows = list(await self.db.execute_fetchall(
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
                self.writer.put(  # only if the text is still the one embedded
                    "INSERT OR REPLACE INTO memory_vectors (memory_id, model, vector)"
                    " SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM memories WHERE id = ? AND text = ?)",
                    (memory_id, encoder.name, pack(vector), memory_id, text))
            after = ids[-1]

    async def _restated(self, memory_id: int, vector: np.ndarray) -> None:
        """A reflection that says again what an older memory says (cosine >= RESTATED)
        supersedes it, so repeated reflections do not pile up. Contradictions are not caught
        this way: "Ada's cat is Miso" / "Bo's cat is Miso" are as close as "... Miso" / "... Tofu"."""
        assert self.index is not None
        hits = await asyncio.to_thread(self.index.search, vector, 3)
        for m in [m for m, sim in hits if sim >= RESTATED and m < memory_id]:
            self.writer.put(
                "UPDATE memories SET superseded_by = ? WHERE id = ? AND superseded_by IS NULL AND pinned = 0",
                (memory_id, m))  # and recall drops it from the index when it next comes up
