"""Measures of what a listener would notice, shared by the tests on the real models and bench/:
word error rate of a transcript, and how much of a reply is English words."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

WORDLISTS = (Path("/usr/share/dict/american-english"), Path("/usr/share/dict/words"))  # Debian's wamerican
# British spellings a Whisper trained on American text writes the American way (and back)
SPELLINGS = {"favourite": "favorite", "colour": "color", "neighbour": "neighbor", "realise": "realize",
             "organise": "organize", "honour": "honor", "behaviour": "behavior", "grey": "gray",
             "centre": "center", "theatre": "theater", "okay": "ok", "mum": "mom", "cosy": "cozy"}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped, British spellings made American."""
    return [SPELLINGS.get(w, w) for w in _WORD.findall(text.lower().replace("’", "'"))]


def wer(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words): substitutions, insertions and deletions by edit distance."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def corpus_wer(pairs: Sequence[tuple[str, str]]) -> float:
    edits = total = 0
    for reference, hypothesis in pairs:
        e, n = wer(reference, hypothesis)
        edits, total = edits + e, total + n
    return edits / max(total, 1)


@functools.cache
def english_words() -> frozenset[str]:
    for path in WORDLISTS:
        if path.is_file():
            found = {w.strip().lower().replace("'s", "") for w in path.read_text(errors="replace").splitlines()}
            return frozenset(w for w in found if w)
    raise FileNotFoundError("no English word list: sudo apt-get install -y wamerican")


def english_share(text: str) -> float:
    """The share of a text's words that are in the English word list (0 for no words)."""
    found = [w.split("'")[0] for w in words(text) if not w.isdigit()]
    if not found:
        return 0.0
    known = english_words()
    return sum(w in known or SPELLINGS.get(w, w) in known for w in found) / len(found)
