"""Check each sentence before it is spoken against a blocklist the streamer controls."""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable

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


class Moderator:
    """Whole-word, case- and accent-insensitive phrase matching.

    `action` is what a match does: "skip" the sentence or "stop" the reply.
    """

    def __init__(self, blocklist: Iterable[str], action: str = "skip") -> None:
        phrases = sorted({normalize(p).strip() for p in blocklist if p.strip()}, key=len, reverse=True)
        self.action = Verdict(action)
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(_phrase(p) for p in phrases) + r")(?!\w)")
            if phrases
            else None
        )

    def check(self, text: str) -> tuple[Verdict, str | None]:
        """The verdict for this sentence, and the phrase that matched."""
        if self._pattern is None:
            return Verdict.SPEAK, None
        m = self._pattern.search(normalize(text))
        if m is None:
            return Verdict.SPEAK, None
        return self.action, m.group()


def _phrase(p: str) -> str:
    # words of a phrase may be split by any run of spaces or punctuation
    return r"[\W_]+".join(re.escape(w) for w in re.split(r"[\W_]+", p) if w)
