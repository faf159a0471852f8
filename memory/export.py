"""Export the interaction log as chat-format JSONL for training.

Each line: {"messages": [...the prompt's messages..., {"role": "assistant", "content": spoken}],
"metadata": {...}}. The assistant message is what was actually heard, never the unspoken rest of
an interrupted reply.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from memory.store import session

DEFAULT_STATUSES = ("complete", "interrupted")


def iter_examples(
    conn: sqlite3.Connection, since: float | None = None, statuses: tuple[str, ...] = DEFAULT_STATUSES
) -> Iterator[dict[str, Any]]:
    marks = ",".join("?" for _ in statuses)
    rows = conn.execute(
        "SELECT id, started_at, persona, model, adapter, messages, recalled, generated_text,"
        " spoken_text, status, interrupted_at, interrupt_reason, moderated, timings, false_interruptions,"
        " review, corrected_text, actions"
        f" FROM turns WHERE status IN ({marks}) AND spoken_text != '' AND started_at >= ?"
        " ORDER BY started_at",
        (*statuses, since or 0.0),
    )
    for (turn_id, started_at, persona, model, adapter, messages, recalled, generated, spoken,
         status, cut_at, reason, moderated, timings, false_interruptions, review, corrected, actions) in rows:
        inputs = conn.execute(
            "SELECT id, kind, source, author, text FROM inputs WHERE turn_id = ? ORDER BY logged_at",
            (turn_id,),
        ).fetchall()
        chat = [{"role": role, "content": content} for role, content in json.loads(messages)]
        chat.append({"role": "assistant", "content": spoken})
        yield {
            "messages": chat,
            "metadata": {
                "turn_id": turn_id,
                "started_at": started_at,
                "persona": persona,
                "model": model,
                "adapter": adapter,
                "status": status,
                "interrupted": status == "interrupted",
                "interrupted_at": cut_at,
                "interrupt_reason": reason,
                "false_interruptions": false_interruptions,
                "generated_text": generated,
                "moderated": json.loads(moderated),
                "recalled": json.loads(recalled),
                "inputs": [
                    {"id": i, "kind": k, "source": s, "author": a, "text": t}
                    for i, k, s, a, t in inputs
                ],
                "timings": json.loads(timings),
                "review": review,  # the operator's: good | bad | corrected | None
                "corrected_text": corrected,
                "actions": json.loads(actions),  # game actions the turn took
            },
        }


def export_jsonl(
    database: Path, out: TextIO, since: float | None = None, include_interrupted: bool = True
) -> int:
    """Write one JSON line per turn that was heard; returns how many were written."""
    with session(database, "interaction log") as conn:
        statuses = DEFAULT_STATUSES if include_interrupted else ("complete",)
        n = 0
        for example in iter_examples(conn, since, statuses):
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
            n += 1
        return n


def export_memories(database: Path, out: TextIO, since: float | None = None) -> int:
    """Write one JSON line per live memory (not superseded) made since `since`, with the viewer's
    name where the memory is about one; returns how many were written."""
    with session(database, "interaction log") as conn:
        rows = conn.execute(
            "SELECT m.id, m.text, m.kind, m.source, m.viewer, v.name, m.subject, m.importance, m.pinned,"
            " m.created_at, m.source_turns FROM memories m LEFT JOIN viewers v"
            " ON m.viewer = v.platform || ':' || v.user_id WHERE m.superseded_by IS NULL AND m.created_at >= ?"
            " ORDER BY m.id", (since or 0.0,))
        n = 0
        for mid, text, kind, source, viewer, name, subject, importance, pinned, created, turns in rows:
            out.write(json.dumps({
                "id": mid, "text": text, "kind": kind, "source": source, "viewer": viewer,
                "viewer_name": name, "subject": subject, "importance": importance, "pinned": bool(pinned),
                "created_at": created, "source_turns": json.loads(turns),
            }, ensure_ascii=False) + "\n")
            n += 1
        return n


def count_turns(database: Path, since: float | None = None) -> int:
    """How many turns were heard since `since` (what one more update window would learn from)."""
    if not database.exists():
        return 0
    with session(database, "interaction log") as conn:
        marks = ",".join("?" for _ in DEFAULT_STATUSES)
        row = conn.execute(f"SELECT COUNT(*) FROM turns WHERE status IN ({marks}) AND spoken_text != ''"
                           " AND started_at >= ?", (*DEFAULT_STATUSES, since or 0.0)).fetchone()
        return int(row[0])
