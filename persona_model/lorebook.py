"""A card's lorebook (`character_book`) as SillyTavern runs it (docs/cards.md#lorebooks): an entry
enters the prompt when one of its keys appears in what was just said (the turn's input and the
`scan_depth` messages before it), or always when it is `constant`; `selective` entries need a
secondary key too (SillyTavern's `selectiveLogic`: and-any, not-all, not-any, and-all). Entries
come in `insertion_order`, lowest first; past the budget the lowest `priority` is left out first.
Entries with no keys that are not constant are memories instead, recalled by meaning.

Keys match whole words, in any case unless `case_sensitive` (a key "cat" does not fire on
"category"); a key written `/pattern/flags`, or any key of an entry with `use_regex`, is a
regular expression.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

from runtime.events import LoreEntry

AND_ANY, NOT_ALL, NOT_ANY, AND_ALL = range(4)  # SillyTavern's selectiveLogic
_SLASHED = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)


@functools.lru_cache(maxsize=4096)
def key_pattern(key: str, case_sensitive: bool = False, regex: bool = False) -> re.Pattern[str]:
    """A key as a pattern; re.error for a regular expression that does not compile."""
    flags = 0 if case_sensitive else re.IGNORECASE
    slashed = _SLASHED.match(key)
    if slashed:
        for letter in slashed.group(2):
            flags |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}.get(letter, 0)
        return re.compile(slashed.group(1), flags)
    if regex:
        return re.compile(key, flags)
    text = re.escape(key.strip())
    head = r"\b" if re.match(r"\w", key.strip()) else ""
    tail = r"\b" if re.search(r"\w$", key.strip()) else ""
    return re.compile(head + text + tail, flags)


def _found(keys: Sequence[str], entry: LoreEntry, text: str) -> list[bool]:
    return [bool(key_pattern(k, entry.case_sensitive, entry.regex).search(text)) for k in keys if k.strip()]


def fires(entry: LoreEntry, text: str) -> bool:
    """Whether `entry` enters the prompt for `text` (what was just said)."""
    if entry.constant:
        return True
    if not any(_found(entry.keys, entry, text)):
        return False
    if not entry.selective or not any(k.strip() for k in entry.secondary_keys):
        return True
    second = _found(entry.secondary_keys, entry, text)
    return {AND_ANY: any(second), NOT_ALL: not all(second), NOT_ANY: not any(second),
            AND_ALL: all(second)}.get(entry.logic, any(second))


MAX_ROUNDS = 4  # recursive scanning: entries firing entries, at most this many rounds deep


def active(book: Sequence[LoreEntry], text: str, recursive: bool = False) -> list[LoreEntry]:
    """The entries that enter the prompt for `text`, in insertion order; `recursive`: the text of
    those in may fire more (an entry with `recurse` off does not fire others)."""
    fired = [e for e in book if fires(e, text)]
    for _ in range(MAX_ROUNDS if recursive else 0):
        said = "\n".join(e.content for e in fired if e.recurse)
        more = [e for e in book if e not in fired and fires(e, said)]
        if not more:
            break
        fired += more
    return sorted(fired, key=lambda e: e.order)


def lore_text(entries: Sequence[LoreEntry]) -> str:
    if not entries:
        return ""
    return "What you know about this:\n" + "\n".join(f"- {e.content}" for e in entries)


def within(entries: Sequence[LoreEntry], fits: Callable[[list[LoreEntry]], bool]) -> list[LoreEntry]:
    """The entries, less the lowest priority ones (the later of equals) until `fits(entries)`."""
    kept = list(entries)
    while kept and not fits(kept):
        drop = min(range(len(kept)), key=lambda i: (kept[i].priority, -i))
        kept.pop(drop)
    return kept
