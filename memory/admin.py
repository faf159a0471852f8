"""`omoide memory ...`: list, search, add, edit, pin and delete what the character remembers.

Runs against the database file directly (SQLite allows it while the character runs: WAL)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from memory.schema import migrate
from memory.store import connect_sync, fts_query

COLUMNS = "id, kind, viewer, importance, pinned, superseded_by, text"


@contextlib.contextmanager
def _open(database: Path) -> Iterator[sqlite3.Connection]:
    """The database, migrated; one transaction, committed on success; closed after."""
    if not database.exists():
        raise FileNotFoundError(f"no memory database at {database}")
    conn = connect_sync(database)
    try:
        migrate(conn)
        with conn:
            yield conn
    finally:
        conn.close()


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
    with _open(database) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM memories WHERE {' AND '.join(where)}"
                            " ORDER BY pinned DESC, created_at DESC LIMIT ?", (*args, limit)).fetchall()


def search(database: Path, text: str, limit: int = 10) -> list[tuple]:
    query = fts_query(text)
    if not query:
        return []
    with _open(database) as conn:
        return conn.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in COLUMNS.split(','))} FROM memories_fts"
            " JOIN memories m ON m.id = memories_fts.rowid WHERE memories_fts MATCH ?"
            " ORDER BY bm25(memories_fts) LIMIT ?", (query, limit)).fetchall()


def add(database: Path, text: str, kind: str = "fact", viewer: str | None = None,
        importance: float = 0.5, pinned: bool = False) -> int:
    with _open(database) as conn:
        cur = conn.execute(
            "INSERT INTO memories (text, source, created_at, kind, viewer, importance, pinned)"
            " VALUES (?, 'operator', ?, ?, ?, ?, ?)", (text, time.time(), kind, viewer, importance, int(pinned)))
    return int(cur.lastrowid or 0)


def _update(database: Path, memory_id: int, sql: str, args: tuple) -> None:
    with _open(database) as conn:
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
