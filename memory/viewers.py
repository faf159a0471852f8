"""What the character learns about viewers as they chat: a profile per viewer, and the facts they
state about themselves ("my cat is called Miso"), kept as memories linked to them. A newer
statement about the same thing ("my cat is called Tofu") supersedes the older one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.events import InputEvent, InputKind

# first-person statements worth remembering: (pattern, how to name what it is about)
_SELF = [
    re.compile(r"\bmy\s+(?P<subject>[a-z][\w' -]{0,30}?)\s+(?:is|are|was|were|'s)\s+(?P<rest>[^.!?]{2,120})", re.I),
    re.compile(r"\bi(?:'m| am)\s+(?P<subject>from|a|an|\d+)\b\s*(?P<rest>[^.!?]{0,80})", re.I),
    re.compile(r"\bi\s+(?P<subject>live|work|love|like|hate|play|have)\s+(?P<rest>[^.!?]{2,120})", re.I),
]


@dataclass(frozen=True, slots=True)
class Fact:
    subject: str  # "cat", "from", "live": a newer fact on the same subject replaces the older
    text: str


def facts_in(event: InputEvent) -> list[Fact]:
    """Facts the viewer states about themselves in this message."""
    if event.kind is not InputKind.CHAT or not event.author:
        return []
    facts: list[Fact] = []
    for pattern in _SELF:
        for m in pattern.finditer(event.text):
            statement = " ".join(m.group(0).split()).rstrip(" ,;")
            subject = " ".join(m.group("subject").lower().split())
            facts.append(Fact(subject, f"{event.author} said: {statement}"))
    return facts
