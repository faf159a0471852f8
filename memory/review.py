"""`omoide logs review`: the operator marks a reply good, bad, or corrected (with the reply as it
should have been). Training leaves bad replies out and learns the correction instead of the
original (docs/learning.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from memory.db import session

VERDICTS = ("good", "bad", "corrected")


class ReviewError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Reviewed:
    turn_id: str
    started_at: float
    heard: str  # the last user message of the prompt: what the reply answered
    spoken: str
    status: str
    review: str | None
    corrected_text: str | None


def recent(database: Path, limit: int = 20, unreviewed: bool = False) -> list[Reviewed]:
    """The newest replies that were heard, newest last."""
    with session(database, "interaction log") as conn:
        rows = conn.execute(
            "SELECT id, started_at, messages, spoken_text, status, review, corrected_text FROM turns"
            " WHERE spoken_text != ''" + (" AND review IS NULL" if unreviewed else "")
            + " ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
    out = []
    for turn_id, started_at, messages, spoken, status, review, corrected in reversed(rows):
        users = [c for r, c in _messages(messages) if r == "user"]
        out.append(Reviewed(turn_id, started_at, users[-1] if users else "", spoken, status, review, corrected))
    return out


def review(database: Path, turn: str, verdict: str, corrected_text: str | None = None) -> str:
    """Record a verdict on a turn (its id, or a unique prefix of at least 6 characters);
    returns the full turn id."""
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    if verdict == "corrected":
        if not corrected_text or not corrected_text.strip():
            raise ReviewError("a correction needs the reply as it should have been")
        corrected_text = " ".join(corrected_text.split())
    elif corrected_text:
        raise ReviewError(f"only a correction takes a text (the verdict was {verdict!r})")
    if len(turn) < 6:
        raise ReviewError("give at least 6 characters of the turn id")
    with session(database, "interaction log") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM turns WHERE id LIKE ? || '%' LIMIT 2",
                                          (turn.replace("%", "").replace("_", ""),))]
        if not ids:
            raise ReviewError(f"no turn with id {turn}")
        if len(ids) > 1:
            raise ReviewError(f"more than one turn starts with {turn}: give more of the id")
        conn.execute("UPDATE turns SET review = ?, corrected_text = ?, reviewed_at = ? WHERE id = ?",
                     (verdict, corrected_text, time.time(), ids[0]))
        return str(ids[0])


def _messages(raw: str) -> list[tuple[str, str]]:
    return [(str(r), str(c)) for r, c in json.loads(raw)]
