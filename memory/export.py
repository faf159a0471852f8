"""Export the interaction log as chat-format JSONL for training.

Each line: {"messages": [...the prompt's messages..., {"role": "assistant", "content": spoken}],
"metadata": {...}}. The assistant message is what was actually heard, never the unspoken rest of
an interrupted reply.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from memory.common_words import COMMON
from memory.db import session
from runtime.events import InputEvent, InputKind, viewer_key

DEFAULT_STATUSES = ("complete", "interrupted")


class Scrubber:
    """Replaces every viewer's name and id (from the viewers table and chat authors) with a stable
    pseudonym, "viewer1", "viewer2"..., in everything an export writes (`[learning] scrub_viewers`,
    `omoide logs export --scrub`). The same viewer gets the same pseudonym across one database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.names: dict[str, str] = {}  # lower-case name -> pseudonym
        self.ids: dict[str, str] = {}  # "platform:user_id" -> pseudonym
        rows = conn.execute("SELECT platform, user_id, name FROM viewers ORDER BY first_seen, platform, user_id")
        for platform, user_id, name in rows:
            alias = self.names.setdefault(name.lower(), f"viewer{len(self.ids) + 1}")
            self.ids[f"{platform}:{user_id}"] = alias
        for (author,) in conn.execute("SELECT DISTINCT author FROM inputs WHERE source = 'twitch'"
                                      " AND author IS NOT NULL ORDER BY author"):
            self.names.setdefault(author.lower(), f"viewer{len(self.names) + 1}")
        # a name is replaced wherever it stands for the viewer: as an author ("Ada: hi", "Ada said:"),
        # as an @mention, and as a bare word unless the name is a common word ("you", "god")
        every = _alternation(n for n in self.names if n.strip())
        rare = _alternation(n for n in self.names if n.strip() and n not in COMMON)
        self._patterns = [p for p in (
            every and re.compile(r"(?m)^((?:\[viewer chat\] )?)(" + every + r")(?=:| said:)", re.IGNORECASE),
            every and re.compile(r"(@)(" + every + r")(?!\w)", re.IGNORECASE),
            rare and re.compile(r"()(?<![\w@])(" + rare + r")(?!\w)", re.IGNORECASE),
        ) if p]

    def text(self, value: str) -> str:
        if value in self.ids:
            return self.ids[value]
        for pattern in self._patterns:
            value = pattern.sub(lambda m: m.group(1) + self.names[m.group(2).lower()], value)
        return value

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: (None if k == "user_id" else self.author(v) if k in ("author", "viewer") else self(v))
                    for k, v in value.items()}
        return value

    def author(self, value: Any) -> Any:
        """A field that holds who someone is: the whole value is their pseudonym."""
        if isinstance(value, str) and value.lower() in self.names:
            return self.names[value.lower()]
        return self(value)


def _alternation(names: Iterable[str]) -> str:
    """A regex alternation of these names, longest first (so "Ada Lovelace" wins over "Ada")."""
    return "|".join(map(re.escape, sorted(names, key=len, reverse=True)))


def iter_examples(
    conn: sqlite3.Connection, since: float | None = None, statuses: tuple[str, ...] = DEFAULT_STATUSES
) -> Iterator[dict[str, Any]]:
    marks = ",".join("?" for _ in statuses)
    rows = conn.execute(
        "SELECT id, started_at, persona, model, adapter, messages, recalled, generated_text,"
        " spoken_text, status, interrupted_at, interrupt_reason, moderated, timings, false_interruptions,"
        " review, corrected_text, actions, traits"
        f" FROM turns WHERE status IN ({marks}) AND spoken_text != '' AND started_at >= ?"
        " ORDER BY started_at",
        (*statuses, since or 0.0),
    )
    forgotten = conn.execute("SELECT viewer, turns FROM forgotten_viewers").fetchall()
    gone_viewers = {str(v) for v, _ in forgotten}
    gone_turns = {str(t) for _, turns in forgotten for t in json.loads(turns)}
    for (turn_id, started_at, persona, model, adapter, messages, recalled, generated, spoken,
         status, cut_at, reason, moderated, timings, false_interruptions, review, corrected, actions, traits) in rows:
        if turn_id in gone_turns:  # it answered a viewer who asked to be forgotten
            continue
        inputs = conn.execute(
            "SELECT id, kind, source, author, text, meta FROM inputs WHERE turn_id = ? ORDER BY logged_at",
            (turn_id,),
        ).fetchall()
        if gone_viewers and any(viewer_key(InputEvent(InputKind(k), t, s, 0.0, a, meta=json.loads(m or "{}")))
                                in gone_viewers for _, k, s, a, t, m in inputs):  # said since they were forgotten
            continue
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
                "traits": json.loads(traits),
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
                    for i, k, s, a, t, _ in inputs
                ],
                "timings": json.loads(timings),
                "review": review,  # the operator's: good | bad | corrected | None
                "corrected_text": corrected,
                "actions": json.loads(actions),  # game actions the turn took
            },
        }


def export_jsonl(
    database: Path, out: TextIO, since: float | None = None, include_interrupted: bool = True,
    scrub: bool = False,
) -> int:
    """Write one JSON line per turn that was heard; returns how many were written. With `scrub`,
    viewers' names and ids are replaced by pseudonyms."""
    with session(database, "interaction log") as conn:
        statuses = DEFAULT_STATUSES if include_interrupted else ("complete",)
        clean = Scrubber(conn) if scrub else None
        n = 0
        for example in iter_examples(conn, since, statuses):
            out.write(json.dumps(clean(example) if clean else example, ensure_ascii=False) + "\n")
            n += 1
        return n


def export_memories(database: Path, out: TextIO, since: float | None = None, scrub: bool = False) -> int:
    """Write one JSON line per live memory (not superseded) made, or approved for training, since
    `since`, with the viewer's name where the memory is about one; returns how many were written."""
    with session(database, "interaction log") as conn:
        clean = Scrubber(conn) if scrub else None
        rows = conn.execute(
            "SELECT m.id, m.text, m.kind, m.source, m.viewer, v.name, m.subject, m.importance, m.pinned,"
            " m.created_at, m.source_turns, m.consent FROM memories m LEFT JOIN viewers v"
            " ON m.viewer = v.platform || ':' || v.user_id WHERE m.superseded_by IS NULL"
            " AND (m.created_at >= ? OR m.consented_at >= ?) ORDER BY m.id", (since or 0.0, since or 0.0))
        n = 0
        for mid, text, kind, source, viewer, name, subject, importance, pinned, created, turns, consent in rows:
            row = {
                "id": mid, "text": text, "kind": kind, "source": source, "viewer": viewer,
                "viewer_name": name, "subject": subject, "importance": importance, "pinned": bool(pinned),
                "created_at": created, "source_turns": json.loads(turns), "consent": consent,
            }
            out.write(json.dumps(clean(row) if clean else row, ensure_ascii=False) + "\n")
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
