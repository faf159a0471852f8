"""`omoide memory ...`: list, search, add, edit, pin and delete what the character remembers.

Runs against the database file directly (SQLite allows it while the character runs: WAL)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memory.db import prepare, session
from memory.index import cosines, unpack
from memory.personal import personal_data
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


def search_by_meaning(database: Path, text: str, encoder: Encoder, limit: int = 10,
                      embed_at_most: int = 2000) -> tuple[list[tuple], int]:
    """Memories nearest in meaning to `text`: by the vectors the character stored, and for those it
    has not embedded yet (added while it was not running), vectors made here for this search (up
    to `embed_at_most`; the character makes and keeps its own). Returns the rows and how many
    memories were left out for want of a vector."""
    with session(database) as conn:
        stored = conn.execute("SELECT v.memory_id, v.vector FROM memory_vectors v JOIN memories m ON m.id = v.memory_id"
                              " WHERE v.model = ? AND m.superseded_by IS NULL", (encoder.name,)).fetchall()
        unembedded = ("FROM memories m LEFT JOIN memory_vectors v ON v.memory_id = m.id AND v.model = ?"
                      " WHERE v.memory_id IS NULL AND m.superseded_by IS NULL")
        (waiting,) = conn.execute(f"SELECT COUNT(*) {unembedded}", (encoder.name,)).fetchone()
        missing = conn.execute(f"SELECT m.id, m.text {unembedded} ORDER BY m.id LIMIT ?",
                               (encoder.name, embed_at_most)).fetchall()
    ids = [int(r[0]) for r in stored] + [int(r[0]) for r in missing]
    if not ids:
        return [], int(waiting)
    query = encoder.encode([text])[0]
    sims = [cosines(*unpack([r[1] for r in stored], encoder.dim), query)] if stored else []  # exact, as recall
    if missing:
        made = encoder.encode([str(r[1]) for r in missing])
        sims.append(made @ query / (np.linalg.norm(made, axis=1) * np.linalg.norm(query) + 1e-12))
    best = [ids[i] for i in np.argsort(-np.concatenate(sims))[:limit]]
    with session(database) as conn:
        found = {r[0]: r for r in conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE id IN ({','.join('?' * len(best))})", best)}
    return [found[i] for i in best if i in found], int(waiting) - len(missing)


def add(database: Path, text: str, kind: str = "fact", viewer: str | None = None,
        importance: float = 0.5, pinned: bool = False) -> int:
    """A memory of the operator's; the database is made if no character has run yet."""
    if not database.exists():
        prepare(database)
    with session(database) as conn:
        conn.execute("DELETE FROM forgotten WHERE text = ?", (text,))  # the operator wants it back
        cur = conn.execute(
            "INSERT INTO memories (text, source, created_at, kind, viewer, importance, pinned)"
            " VALUES (?, 'operator', ?, ?, ?, ?, ?)", (text, time.time(), kind, viewer, importance, int(pinned)))
    return int(cur.lastrowid or 0)


def _update(database: Path, memory_id: int, sql: str, args: tuple, forget: bool = False) -> None:
    """Change one memory; with `forget`, its text as it was is kept in `forgotten`, so that the
    card's lorebook, read at every start, does not add it back."""
    with session(database) as conn:
        if conn.execute("SELECT 1 FROM memories WHERE id = ?", (memory_id,)).fetchone() is None:
            raise KeyError(f"no memory with id {memory_id}")
        if forget:
            conn.execute("INSERT OR REPLACE INTO forgotten (text, source, forgotten_at)"
                         " SELECT text, source, ? FROM memories WHERE id = ?", (time.time(), memory_id))
        conn.execute(sql, (*args, memory_id))


def edit(database: Path, memory_id: int, text: str) -> None:
    """New text for a memory; the full-text index follows and its vector is made again (triggers)."""
    _update(database, memory_id, "UPDATE memories SET text = ? WHERE id = ?", (text,), forget=True)


def pin(database: Path, memory_id: int, pinned: bool = True) -> None:
    _update(database, memory_id, "UPDATE memories SET pinned = ? WHERE id = ?", (int(pinned),))


def delete(database: Path, memory_id: int) -> None:
    _update(database, memory_id, "DELETE FROM memories WHERE id = ?", (), forget=True)


def pending(database: Path, viewer: str | None = None, limit: int = 100) -> list[tuple]:
    """Facts from chat (viewers' own, and what reflections took from the stream) waiting for the
    operator's word before they may be trained, oldest first."""
    where, args = "consent = 'pending' AND superseded_by IS NULL", []
    if viewer:
        where += " AND viewer = ?"
        args.append(viewer)
    with session(database) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM memories WHERE {where} ORDER BY created_at LIMIT ?",
                            (*args, limit)).fetchall()


def consent(database: Path, ids: list[int] | None, verdict: str, viewer: str | None = None) -> tuple[int, list[str]]:
    """Approve or reject facts for training: these ids, or (ids None) every pending one (of one
    viewer). Returns how many changed, and why each refused one was (personal data, unknown id)."""
    if verdict not in ("approved", "rejected"):
        raise ValueError(f"consent must be approved or rejected, not {verdict!r}")
    refused: list[str] = []
    with session(database) as conn:
        if ids is None:
            where, args = "consent = 'pending'", []
            if viewer:
                where += " AND viewer = ?"
                args.append(viewer)
            ids = [int(r[0]) for r in conn.execute(f"SELECT id FROM memories WHERE {where}", args)]
        changed = 0
        for memory_id in ids:
            row = conn.execute("SELECT consent, text FROM memories WHERE id = ?", (memory_id,)).fetchone()
            if row is None:
                refused.append(f"{memory_id}: no such memory")
            elif row[0] == "blocked" and verdict == "approved":
                refused.append(f"{memory_id}: holds {personal_data(row[1]) or 'personal data'}, never trained")
            elif row[0] is None:
                refused.append(f"{memory_id}: not from chat (the operator's or the card's facts are trained as they"
                               " are; episodes and thoughts never)")
            else:
                conn.execute("UPDATE memories SET consent = ?, consented_at = ? WHERE id = ?",
                             (verdict, time.time(), memory_id))
                changed += 1
    return changed, refused


@dataclass(frozen=True, slots=True)
class Forgotten:
    viewer: str  # "platform:user_id"
    memories: list[int]  # the ids their memories had
    turns: list[str]  # the turns that answered them
    inputs: int  # their lines, blanked in the log


def resolve_viewer(database: Path, who: str) -> str:
    """A viewer key ("twitch:12345") from a key or a name; an error naming the choices otherwise."""
    with session(database) as conn:
        if ":" in who:
            return who
        found = conn.execute("SELECT platform || ':' || user_id FROM viewers WHERE lower(name) = lower(?)",
                             (who,)).fetchall()
    if not found:
        raise KeyError(f"no viewer named {who!r} (omoide memory list shows viewers as platform:id)")
    if len(found) > 1:
        raise ValueError(f"more than one viewer is named {who!r}: {', '.join(r[0] for r in found)}; give one of those")
    return str(found[0][0])


def forget_viewer(database: Path, who: str) -> Forgotten:
    """Forget a viewer: their profile and memories go, their lines in the log are blanked, and they
    are in no later training window or replay; what they say from now on is not learned. Turns
    that answered them stay in the log without their words; their words stay in the prompts of
    turns that had them as context, and in adapters already trained (see docs/learning.md)."""
    viewer = resolve_viewer(database, who)
    platform, _, user_id = viewer.partition(":")
    with session(database) as conn:
        mine = ("source = ? AND (json_extract(meta, '$.user_id') = ?"
                " OR (json_extract(meta, '$.user_id') IS NULL AND lower(author) = lower(?)))")
        lines = conn.execute(f"SELECT id, turn_id FROM inputs WHERE {mine}", (platform, user_id, user_id)).fetchall()
        memories = [int(r[0]) for r in conn.execute("SELECT id FROM memories WHERE viewer = ?", (viewer,))]
        turns = sorted({str(t) for _, t in lines if t})
        if not lines and not memories and conn.execute(
                "SELECT 1 FROM viewers WHERE platform = ? AND user_id = ?", (platform, user_id)).fetchone() is None:
            raise KeyError(f"no viewer {viewer} in {database}")
        conn.execute(f"UPDATE inputs SET text = '[forgotten]', author = NULL, meta = '{{}}' WHERE {mine}",
                     (platform, user_id, user_id))
        conn.execute("DELETE FROM memories WHERE viewer = ?", (viewer,))
        conn.execute("DELETE FROM viewers WHERE platform = ? AND user_id = ?", (platform, user_id))
        conn.execute("INSERT OR REPLACE INTO forgotten_viewers (viewer, forgotten_at, turns, memories)"
                     " VALUES (?, ?, ?, ?)", (viewer, time.time(), json.dumps(turns), json.dumps(memories)))
    return Forgotten(viewer, memories, turns, len(lines))


def forgotten(database: Path) -> tuple[set[str], set[int]]:
    """The turns and memory ids of every forgotten viewer: what training must never replay."""
    with session(database) as conn:
        rows = conn.execute("SELECT turns, memories FROM forgotten_viewers").fetchall()
    return ({t for r in rows for t in json.loads(r[0])}, {int(m) for r in rows for m in json.loads(r[1])})
