"""The database file, opened: for a one-off job (the memory and logs commands, exports,
migrations) or for a running character. Always WAL, so the two can work on it at once."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import aiosqlite

from memory.schema import SchemaError, check, migrate


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


def prepare(path: Path) -> None:
    """Before a character starts on the file: create or migrate it, and mark a turn a crash cut
    off as failed (it stays as far as it got)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect_sync(path)
    try:
        migrate(conn)
        conn.execute("UPDATE turns SET status = 'failed', error = 'process ended mid-turn' WHERE status = 'started'")
        conn.commit()
    finally:
        conn.close()


def owner(path: Path) -> str | None:
    """Whose memories the file holds: the character that first ran on it (None for a new file,
    or one an older Omoide wrote, which its next character takes as hers)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT value FROM state WHERE key = 'character'").fetchall()
    except sqlite3.DatabaseError:  # no state table yet, or not an Omoide file: prepare() says which
        return None
    finally:
        conn.close()
    return str(rows[0][0]) if rows else None


def claim(path: Path, character: str) -> None:
    """Mark the file as `character`'s (prepare() first); a file that is someone's stays theirs."""
    conn = connect_sync(path)
    try:
        conn.execute("INSERT OR IGNORE INTO state (key, value) VALUES ('character', ?)", (character,))
        conn.commit()
    finally:
        conn.close()


async def open_async(path: Path) -> aiosqlite.Connection:
    """The running character's connection (prepare() first)."""
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: safe against a crash
    await db.execute("PRAGMA busy_timeout=5000")
    return db
