"""Moderation on both sides of the model, from lists the streamer controls.

Before: `ChatFilter` cleans chat (control and zero-width characters, length) and drops messages
with blocked words or patterns. After: `Moderator` checks each sentence before it is spoken,
shown or sent; a blocked sentence is skipped, replaced by a set line, or ends the reply.
Lists can live in files that are re-read when they change, while the character runs.
"""

from __future__ import annotations

import enum
import logging
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)
_ZERO_WIDTH = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# common look-alike spellings folded before matching ("h3ll0" matches "hello")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})


class Verdict(enum.StrEnum):
    SPEAK = "speak"
    SKIP = "skip"  # drop this sentence, go on with the reply
    STOP = "stop"  # drop this sentence and end the reply here


def normalize(text: str) -> str:
    """Case, accents, width and look-alike digits folded, so spellings cannot dodge the list."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.casefold().translate(_LEET)


class ListFiles:
    """Lines of text files (one entry a line, `#` comments), re-read when a file changes."""

    def __init__(self, paths: Sequence[Path], every_s: float = 1.0) -> None:
        self.paths = list(paths)
        self.every_s = every_s
        self._stamp: tuple[float, ...] = ()
        self._checked = -1e9
        self.lines: list[str] = []
        self.refresh()

    def refresh(self) -> bool:
        """Re-read if a file changed (at most every `every_s`); True when the lines changed."""
        now = time.monotonic()
        if now - self._checked < self.every_s:
            return False
        self._checked = now
        stamp = tuple(p.stat().st_mtime_ns if p.exists() else -1 for p in self.paths)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        lines: list[str] = []
        for p in self.paths:
            try:
                text = p.read_text(encoding="utf-8")
            except OSError as exc:
                log.warning("moderation list unreadable; keeping the rest", extra={"file": str(p),
                                                                                  "error": str(exc)})
                continue
            lines += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        self.lines = lines
        return True


def _phrases_regex(phrases: Iterable[str]) -> re.Pattern[str] | None:
    cleaned = sorted({normalize(p).strip() for p in phrases if p.strip()}, key=len, reverse=True)
    if not cleaned:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(_phrase(p) for p in cleaned) + r")(?!\w)")


class Moderator:
    """Whole-word, case- and accent-insensitive phrase matching on what the model says.

    `action` is what a match does: "skip" the sentence or "stop" the reply; with a `replacement`
    line, the blocked sentence is replaced by it instead of skipped.
    """

    def __init__(self, blocklist: Iterable[str], action: str = "skip", replacement: str = "",
                 files: Sequence[Path] = ()) -> None:
        self.static = list(blocklist)
        self.action = Verdict(action)
        self.replacement = replacement.strip()
        self.files = ListFiles(files) if files else None
        self._pattern = _phrases_regex(self.static + (self.files.lines if self.files else []))

    def check(self, text: str) -> tuple[Verdict, str | None]:
        """The verdict for this sentence, and the phrase that matched."""
        if self.files is not None and self.files.refresh():
            self._pattern = _phrases_regex(self.static + self.files.lines)
        if self._pattern is None:
            return Verdict.SPEAK, None
        m = self._pattern.search(normalize(text))
        if m is None:
            return Verdict.SPEAK, None
        return self.action, m.group()


class ChatFilter:
    """Cleans chat before anything else sees it, and drops what must not reach the model.

    Lines of a list that start with `re:` are regular expressions; the others are phrases.
    """

    def __init__(self, max_chars: int = 300, blocklist: Iterable[str] = (), files: Sequence[Path] = ()) -> None:
        self.max_chars = max_chars
        self.static = list(blocklist)
        self.files = ListFiles(files) if files else None
        self._build(self.static + (self.files.lines if self.files else []))

    def _build(self, entries: list[str]) -> None:
        self._phrases = _phrases_regex(e for e in entries if not e.startswith("re:"))
        self._patterns: list[re.Pattern[str]] = []
        for e in entries:
            if e.startswith("re:"):
                try:
                    self._patterns.append(re.compile(e[3:].strip(), re.IGNORECASE))
                except re.error as exc:
                    log.warning("bad pattern in the chat blocklist; ignored", extra={"pattern": e, "error": str(exc)})

    @staticmethod
    def clean(text: str) -> str:
        text = unicodedata.normalize("NFKC", text)
        text = _ZERO_WIDTH.sub("", text)
        return " ".join(_CONTROL.sub(" ", text).split())

    def screen(self, text: str) -> tuple[str, str | None]:
        """The cleaned, length-capped text, and why it must be dropped (None: keep it)."""
        if self.files is not None and self.files.refresh():
            self._build(self.static + self.files.lines)
        text = self.clean(text)
        if not text:
            return text, "empty"
        if len(text) > self.max_chars:
            text = text[: self.max_chars].rstrip() + "…"
        if self._phrases is not None and (m := self._phrases.search(normalize(text))):
            return text, f"blocked word: {m.group()}"
        for p in self._patterns:
            if p.search(text):
                return text, f"blocked pattern: {p.pattern}"
        return text, None


def _phrase(p: str) -> str:
    # words of a phrase may be split by any run of spaces or punctuation
    return r"[\W_]+".join(re.escape(w) for w in re.split(r"[\W_]+", p) if w)
