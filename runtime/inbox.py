"""A bounded inbox that picks what to answer: inputs are scored, not served first-in-first-out.

Priority comes first; within it, direct mentions of the character, questions, bits, subs and
redemptions rank higher, viewers answered recently rank lower, and older chat slowly loses to
newer. Copy-pasted spam is merged into one entry; each kind of input has a maximum age after
which it is dropped instead of answered late; one viewer cannot fill the backlog. Control jumps
the queue.

Lines typed by the person at the terminal or in the companion page (event "typed") are a
conversation, not chat: they rank above chat, are answered in the order typed, and are never
dropped for age, merged or capped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.events import TYPED, InputEvent, InputKind, Priority
from runtime.moderation import normalize
from runtime.ports import Clock

# Within a priority: the streamer's own speech, then a game's demands, then channel events, then chat.
DEFAULT_WEIGHTS = {"transcript": 8.0, "typed": 7.0, "game_force": 6.0, "message": 0.0, "cheer": 4.0,
                   "subscription": 4.0, "gift": 4.0, "redemption": 5.0, "raid": 5.0, "follow": 1.0}
DEFAULT_MAX_AGE = {"chat": 120.0, "message": 120.0, "typed": math.inf, "follow": 60.0, "idle": 30.0,
                   "game_context": 30.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scoring:
    mention_bonus: float = 3.0  # the character's name is in the message
    question_bonus: float = 1.0
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # by event
    cooldown_s: float = 60.0  # a viewer answered this recently...
    cooldown_penalty: float = 4.0  # ...ranks this much lower
    age_penalty_per_min: float = 1.0  # older chat loses slowly to newer
    max_age_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_AGE))
    per_viewer: int = 3  # inputs one viewer may have waiting; their oldest goes first


def event_type(event: InputEvent) -> str:
    """The kind of input for scoring: a chat source's event ("cheer", "raid"...) or the kind."""
    return str(event.meta.get("event") or event.kind)


@dataclass(slots=True)
class _Entry:
    event: InputEvent
    key: str  # for spam merging
    base: float = 0.0  # the part of the score that does not change while it waits
    authors: list[str] = field(default_factory=list)
    count: int = 1


class Inbox:
    """Holds inputs until the director takes them; bounded by `capacity`."""

    def __init__(self, clock: Clock, capacity: int = 64, max_age: float = 120.0,
                 scoring: Scoring | None = None, names: tuple[str, ...] = ()) -> None:
        if capacity < 1:
            raise ValueError("inbox capacity must be at least 1")
        self.clock = clock
        self.capacity = capacity
        self.scoring = scoring or Scoring(max_age_s={**DEFAULT_MAX_AGE, "chat": max_age, "message": max_age})
        self.dropped = 0
        self.merged = 0
        self._entries: list[_Entry] = []
        self._answered: dict[str, float] = {}  # viewer -> when last answered
        self._names = [re.compile(rf"(?<!\w){re.escape(normalize(n))}(?!\w)") for n in names if n.strip()]
        self._control: asyncio.Queue[InputEvent] = asyncio.Queue()
        self._ready = asyncio.Event()
        self.decision_s: deque[float] = deque(maxlen=10_000)  # how long recent picks took

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, event: InputEvent) -> bool:
        """Add an input; False if it was refused because the inbox is full of better ones."""
        if event.is_control:
            self._control.put_nowait(event)
            return True
        key = self._spam_key(event)
        if key:
            for entry in self._entries:
                if entry.key == key:  # the same message again: one entry, counted
                    entry.count += 1
                    if event.author and event.author not in entry.authors and len(entry.authors) < 20:
                        entry.authors.append(event.author)
                    self.merged += 1
                    return True
        if event.author and self.scoring.per_viewer > 0 and event_type(event) != TYPED:
            theirs = [e for e in self._entries if e.event.author == event.author]
            if len(theirs) >= self.scoring.per_viewer:
                self._entries.remove(theirs[0])
                self.dropped += 1
        if len(self._entries) >= self.capacity:
            now = self.clock.now()
            worst = min(self._entries, key=lambda e: (self.score(e, now), -e.event.order))
            if event.priority is not Priority.CRITICAL and self.score(self._entry(event, key), now) <= self.score(worst, now):
                self.dropped += 1
                return False
            if worst.event.priority is Priority.CRITICAL and event.priority is not Priority.CRITICAL:
                self.dropped += 1
                return False
            if worst.event.priority is not Priority.CRITICAL:
                self._entries.remove(worst)
                self.dropped += 1
        self._entries.append(self._entry(event, key))
        self._ready.set()
        return True

    def answered(self, author: str | None) -> None:
        """The director answered this viewer: they wait a little before their next turn."""
        if author:
            self._answered[author] = self.clock.now()
            if len(self._answered) > 10_000:  # forget the longest ago
                for name, _ in sorted(self._answered.items(), key=lambda kv: kv[1])[:5_000]:
                    del self._answered[name]

    def _entry(self, event: InputEvent, key: str) -> _Entry:
        s = self.scoring
        base = 100.0 * int(event.priority) + s.weights.get(event_type(event), 0.0)
        if event.kind is InputKind.CHAT and event_type(event) != TYPED:
            text = normalize(event.text)
            if any(p.search(text) for p in self._names):
                base += s.mention_bonus
            if "?" in event.text:
                base += s.question_bonus
        return _Entry(event, key, base, [event.author] if event.author else [])

    def score(self, entry: _Entry, now: float) -> float:
        e, s = entry.event, self.scoring
        score = entry.base
        if event_type(e) == TYPED:  # the order typed: the older first (ties go to the older)
            return score
        if e.kind is InputKind.CHAT:
            score -= s.age_penalty_per_min * max(0.0, now - e.received_at) / 60.0
        last = self._answered.get(e.author or "")
        if last is not None and now - last < s.cooldown_s:
            score -= s.cooldown_penalty
        return score + math.log2(entry.count)

    async def get(self) -> InputEvent:
        """The best input to answer now; stale ones are dropped on the way."""
        while True:
            started = time.perf_counter()
            now = self.clock.now()
            fresh = [e for e in self._entries if not self._stale(e.event, now)]
            self.dropped += len(self._entries) - len(fresh)
            self._entries = fresh
            if fresh:
                best = max(fresh, key=lambda e: (self.score(e, now), -e.event.order))
                self._entries.remove(best)
                self.decision_s.append(time.perf_counter() - started)
                if not self._entries:
                    self._ready.clear()
                if best.count == 1:
                    return best.event
                return dataclasses.replace(
                    best.event, meta={**best.event.meta, "merged": best.count, "authors": best.authors})
            self._ready.clear()
            await self._ready.wait()

    async def get_control(self) -> InputEvent:
        return await self._control.get()

    def _stale(self, event: InputEvent, now: float) -> bool:
        limit = self.scoring.max_age_s.get(event_type(event))
        if limit is None:
            limit = self.scoring.max_age_s.get(str(event.kind))
        return limit is not None and event.priority < Priority.CRITICAL and now - event.received_at > limit

    @staticmethod
    def _spam_key(event: InputEvent) -> str:
        if event.kind is not InputKind.CHAT or event_type(event) not in ("chat", "message"):
            return ""
        text = re.sub(r"(.)\1{2,}", r"\1\1", normalize(event.text))  # "lolllll" = "loll"
        return " ".join(re.sub(r"[^\w\s]", " ", text).split())
