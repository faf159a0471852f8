"""`omoide memory ...`: list, search, add, edit, pin and delete what the character remembers.

Runs against the database file directly (SQLite allows it while the character runs: WAL)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from memory.db import session
from memory.index import cosines, unpack
from memory.recall import Encoder, fts_query

COLUMNS = "id, kind, viewer, importance, pinned, superseded_by, text"


def list_memories(database: Path, viewer: str | None = None, kind: str | None = None,
                  include_superseded: bool = False, limit: int = 50) -> list[tuple]:
    where, args = ["1 = 1"], []
    if viewer:
        where.append("viewer = ?")
        args.append(viewer)
    if kind:
        where.append("kind = ?")
        args.append(kind)
    if not include_superseded:
        where.append("superseded_by IS NULL")
    with session(database) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM memories WHERE {' AND '.join(where)}"
                            " ORDER BY pinned DESC, created_at DESC LIMIT ?", (*args, limit)).fetchall()


def search(database: Path, text: str, limit: int = 10) -> list[tuple]:
    query = fts_query(text)
    if not query:
        return []
    with session(database) as conn:
        return conn.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in COLUMNS.split(','))} FROM memories_fts"
            " JOIN memories m ON m.id = memories_fts.rowid WHERE memories_fts MATCH ?"
            " ORDER BY bm25(memories_fts) LIMIT ?", (query, limit)).fetchall()


def search_by_meaning(database: Path, text: str, encoder: Encoder, limit: int = 10) -> list[tuple]:
    """Memories nearest in meaning to `text`, by the vectors the running character stored (those
    not embedded yet are left out). Falls back to full-text search when there are none."""
    with session(database) as conn:
        rows = conn.execute("SELECT v.memory_id, v.vector FROM memory_vectors v JOIN memories m ON m.id = v.memory_id"
                            " WHERE v.model = ? AND m.superseded_by IS NULL", (encoder.name,)).fetchall()
    if not rows:
        return search(database, text, limit)
    sims = cosines(*unpack([r[1] for r in rows], encoder.dim), encoder.encode([text])[0])  # exact, as recall re-scores
    best = [int(rows[i][0]) for i in np.argsort(-sims)[:limit]]
    with session(database) as conn:
        found = {r[0]: r for r in conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE id IN ({','.join('?' * len(best))})", best)}
    return [found[i] for i in best if i in found]


def add(database: Path, text: str, kind: str = "fact", viewer: str | None = None,
        importance: float = 0.5, pinned: bool = False) -> int:
    with session(database) as conn:
        cur = conn.execute(
            "INSERT INTO memories (text, source, created_at, kind, viewer, importance, pinned)"
            " VALUES (?, 'operator', ?, ?, ?, ?, ?)", (text, time.time(), kind, viewer, importance, int(pinned)))
    return int(cur.lastrowid or 0)


def _update(database: Path, memory_id: int, sql: str, args: tuple) -> None:
    with session(database) as conn:
        if conn.execute("SELECT 1 FROM memories WHERE id = ?", (memory_id,)).fetchone() is None:
            raise KeyError(f"no memory with id {memory_id}")
        conn.execute(sql, (*args, memory_id))


def edit(database: Path, memory_id: int, text: str) -> None:
    """New text for a memory; the full-text index follows and its vector is made again (triggers)."""
    _update(database, memory_id, "UPDATE memories SET text = ? WHERE id = ?", (text,))


def pin(database: Path, memory_id: int, pinned: bool = True) -> None:
    _update(database, memory_id, "UPDATE memories SET pinned = ? WHERE id = ?", (int(pinned),))


def delete(database: Path, memory_id: int) -> None:
    _update(database, memory_id, "DELETE FROM memories WHERE id = ?", ())
