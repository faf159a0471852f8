"""Viewers' facts for the learning benchmarks: made-up names (never in any pretraining), several
subjects, values drawn from one pool per subject so that every distractor is another viewer's
value of the same kind. Memory rows as `omoide logs export` writes them, approved."""

from __future__ import annotations

import itertools
import random
from typing import Any

# (subject as memory/viewers.py names it, how a viewer says it, the values)
SUBJECTS = [
    ("cat", "my cat is called {}", ["Miso", "Tofu", "Biscuit", "Pixel", "Mochi", "Yuzu", "Pepper", "Clover",
                                    "Noodle", "Waffle", "Sprout", "Pickle"]),
    ("live", "I live in {}", ["Osaka", "Lisbon", "Quito", "Tallinn", "Perth", "Dakar", "Hanoi", "Oslo", "Lima",
                              "Porto", "Cusco", "Bergen"]),
    ("favourite game", "my favourite game is {}", ["Tetris", "Celeste", "Hades", "Terraria", "Portal", "Factorio",
                                                   "Stardew Valley", "Outer Wilds", "Hollow Knight", "Minecraft"]),
    ("work", "I work as a {}", ["nurse", "baker", "plumber", "pilot", "librarian", "welder", "dentist", "florist",
                                "chef", "teacher"]),
    ("favourite drink", "my favourite drink is {}", ["matcha", "cocoa", "lemonade", "espresso", "chai", "kombucha",
                                                     "cider", "oolong"]),
]
_ONSETS = ["B", "D", "F", "G", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["rin", "lo", "mek", "dra", "vos", "nix", "tal", "rue"]


def names(n: int, seed: int = 0) -> list[str]:
    """`n` made-up two-syllable names ("Kavos", "Lemek"), shuffled by seed."""
    every = [o + v + c for o, v, c in itertools.product(_ONSETS, _VOWELS, _CODAS)]
    random.Random(seed).shuffle(every)
    if n > len(every):
        raise ValueError(f"at most {len(every)} names")
    return every[:n]


def facts(people: list[str], seed: int = 0, first_id: int = 0) -> list[dict[str, Any]]:
    """One fact per person, the subjects in turn, each value drawn from its subject's pool."""
    rng = random.Random(seed)
    out = []
    for i, name in enumerate(people):
        subject, says, pool = SUBJECTS[i % len(SUBJECTS)]
        out.append({"id": first_id + i, "kind": "fact", "text": f"{name} said: {says.format(rng.choice(pool))}",
                    "subject": subject, "viewer_name": name, "source_turns": [], "consent": "approved"})
    return out
