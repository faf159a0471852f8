"""Several characters on one stream: who answers, who hears what, and the banter between them.

A troupe is the characters one director runs, one turn at a time (no two speak at once). Each
has her own cast (card, voice, memory store, her adapter over the shared model) and her own
history. Who answers an input:

1. the character the operator picked for the next turn (`pick`), unless she is muted;
2. the one the input names ("Hana, what do you think?"), unless she is muted;
3. for a banter line, the one it was said to;
4. else, by `order`: the character who has been quiet the longest (`alternate`), or the first.

Who hears it: a line naming one character is hers alone when `addressed = "private"` (a secret
told to her is in no other character's history, memory or training data); everything else,
and every character's reply to it, is heard by all: the others get her reply as her line
("Hana: ..."), never as a system note. After a reply to chat, the characters may say up to
`banter` lines to each other before chat is answered again.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from runtime.events import AudioChunk, ChatMessage, InputEvent, InputKind, Priority, Sentence, input_text
from runtime.ports import Attributed, OutputSink
from runtime.turn import Cast

COLLAB = "collab"  # the source of a line one character says to another
BANTER = "banter"  # its meta["event"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CollabSettings:
    order: Literal["alternate", "first"] = "alternate"  # who answers a line that names nobody
    banter: int = 2  # after a reply to chat, lines the characters say to each other before chat again
    addressed: Literal["private", "public"] = "private"  # a line naming one character: hers alone, or all's


@dataclass(eq=False)
class Member:
    """One character of the troupe: her cast, what she has heard, whether she may speak."""

    cast: Cast
    history: deque[ChatMessage] = field(default_factory=deque)
    muted: bool = False  # the operator silenced her: others answer in her place
    greeting: str = ""  # said without the model when she starts ("": nothing)
    last_spoke: float = -math.inf

    @property
    def name(self) -> str:
        return self.cast.persona.name


class Troupe:
    """The characters a director runs. With one character every choice is hers, as it always was."""

    def __init__(self, casts: Sequence[Cast], settings: CollabSettings = CollabSettings()) -> None:
        if not casts:
            raise ValueError("a troupe needs at least one character")
        self.members = [Member(c) for c in casts]
        self.settings = settings
        self.picked: Member | None = None  # the operator's choice for the next turn
        self.banter_left = 0  # banter lines still to come in this exchange
        self.pending: InputEvent | None = None  # the banter line waiting for its answer
        names = "|".join(re.escape(m.name) for m in self.members)
        self._names = re.compile(rf"(?<!\w)({names})(?!\w)", re.IGNORECASE)

    @property
    def lead(self) -> Member:
        return self.members[0]

    @property
    def solo(self) -> bool:
        return len(self.members) == 1

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name.casefold() == name.casefold():
                return m
        raise KeyError(f"no character named {name!r} (the characters: {', '.join(m.name for m in self.members)})")

    def addressed(self, event: InputEvent) -> Member | None:
        """The character an input is for, where there are several: the one the runtime meant it
        for (a banter line, her greeting), else the one a viewer's line names first."""
        if self.solo:
            return None
        to = event.meta.get("to")
        if isinstance(to, str) and any(m.name == to for m in self.members):
            return self.member(to)
        return self._named(event)

    def _named(self, event: InputEvent) -> Member | None:
        if event.kind not in (InputKind.CHAT, InputKind.TRANSCRIPT) or event.source == COLLAB:
            return None
        found = self._names.search(event.text)
        return self.member(found.group(1)) if found else None

    def hearers(self, event: InputEvent) -> list[Member]:
        """Who hears an input: all, but a viewer's line naming one character, privately, is hers alone."""
        to = self._named(event) if not self.solo else None
        if to is not None and self.settings.addressed == "private":
            return [to]
        return list(self.members)

    def speaker(self, event: InputEvent) -> Member:
        """Who answers this input (see the module's doc)."""
        picked, self.picked = self.picked, None
        for choice in (picked, self.addressed(event)):
            if choice is not None and not choice.muted:
                return choice
        return self._by_order()

    def heard(self, speaker: Member, inputs: tuple[InputEvent, ...], spoken: str, *, greeting: bool = False,
              told: Member | None = None) -> None:
        """A turn is over: each character who heard it keeps the input and the reply, the speaker
        as her own words, the others as her line; `told`, who answers the reply next, hears it
        as her turn's input."""
        if inputs[0] is self.pending:
            self.pending = None
        for m, lines in self._lines(speaker, inputs, spoken, greeting, told):
            m.history.extend(lines)

    def _lines(self, speaker: Member, inputs: tuple[InputEvent, ...], spoken: str, greeting: bool,
               told: Member | None) -> list[tuple[Member, list[ChatMessage]]]:
        """What each character who heard a turn keeps of it (`heard`)."""
        first = inputs[0]
        audience = self.hearers(first)
        kept = []
        for m in audience + ([speaker] if speaker not in audience else []):
            lines = []
            if not greeting and (m is speaker or first.source != COLLAB or first.author != m.name):
                lines.append(ChatMessage("user", input_text(inputs)))
            if spoken and m is not told:
                lines.append(ChatMessage("assistant", spoken) if m is speaker
                             else ChatMessage("user", f"{speaker.name}: {spoken}"))
            kept.append((m, lines))
        return kept

    def upcoming(self, speaker: Member, inputs: tuple[InputEvent, ...],
                 spoken: str) -> tuple[Member, list[ChatMessage], bool]:
        """Who most likely speaks after this turn, her history then, and whether she answers
        `spoken` (banter), while the turn is still being spoken (nothing changes): the one a
        banter line will go to, else the one the order picks for a line that names nobody. Her
        next turn, or her prompt's start, is prepared meanwhile."""
        told = self._banter_to(speaker, inputs, spoken)
        picked = self.picked if self.picked is not None and not self.picked.muted else None
        after = told or picked or self._by_order(speaker)
        history = list(after.history)
        for m, lines in self._lines(speaker, inputs, spoken, False, told):
            if m is after:
                history.extend(lines)
        return after, history, told is not None

    def line(self, speaker: Member, to: Member, spoken: str, now: float) -> InputEvent:
        """What `speaker` said, as the input of `to`'s banter turn."""
        return InputEvent(InputKind.CHAT, spoken, COLLAB, now, speaker.name, Priority.HIGH,
                          meta={"event": BANTER, "to": to.name})

    def _by_order(self, spoke: Member | None = None) -> Member:
        """Who `order` picks for a line that names nobody (`spoke`: who is speaking now, as if
        she had just finished)."""
        free = [m for m in self.members if not m.muted] or self.members
        if self.settings.order == "first":
            return free[0]
        return min(free, key=lambda m: math.inf if m is spoke else m.last_spoke)

    def banter_after(self, speaker: Member, inputs: tuple[InputEvent, ...], spoken: str,
                     now: float, made: InputEvent | None = None) -> InputEvent | None:
        """The line the next banter turn answers, if the characters go on talking to each other:
        `made` (made by `line` while she spoke) if it is what she said, to whom it was made for."""
        to = self._banter_to(speaker, inputs, spoken)
        if not self.solo and spoken and inputs[0].source != COLLAB:  # a reply to chat starts an exchange
            self.banter_left = self._exchange(speaker, inputs[0])
        if to is None:
            return None
        self.banter_left -= 1
        fits = made is not None and made.text == spoken and made.author == speaker.name and made.meta.get("to") == to.name
        self.pending = made if fits else self.line(speaker, to, spoken, now)
        return self.pending

    def _exchange(self, speaker: Member, first: InputEvent) -> int:
        """The banter lines a reply to `first` (not a banter line) opens: none after a private
        line or a channel event."""
        private = self.hearers(first) == [speaker]
        chat = first.kind in (InputKind.CHAT, InputKind.TRANSCRIPT, InputKind.IDLE)
        return 0 if private or not chat else self.settings.banter

    def _banter_to(self, speaker: Member, inputs: tuple[InputEvent, ...], spoken: str) -> Member | None:
        """Who the speaker's reply will be said to as banter (None: chat is answered next)."""
        if self.solo or not spoken:
            return None
        left = self.banter_left if inputs[0].source == COLLAB else self._exchange(speaker, inputs[0])
        others = [m for m in self.members if m is not speaker and not m.muted]
        if left <= 0 or not others:
            return None
        return min(others, key=lambda m: m.last_spoke)

    def end_banter(self) -> None:
        """No more banter this exchange; a line said but not answered yet stays heard."""
        self.banter_left = 0
        line, self.pending = self.pending, None
        if line is not None:
            self.member(str(line.meta["to"])).history.append(ChatMessage("user", input_text((line,))))

    def stale(self, event: InputEvent) -> bool:
        """A banter line whose exchange the operator ended: not answered."""
        return event.source == COLLAB and event is not self.pending


class Voiced:
    """Implements the OutputSink port over a sink the characters share that shows who speaks
    (Attributed): before each of her turns it is told her name; every call goes on to it."""

    def __init__(self, sink: OutputSink, character: str) -> None:
        self.sink, self.character = sink, character

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        if isinstance(self.sink, Attributed):
            self.sink.character = self.character
        await self.sink.begin_turn(turn_id, inputs)

    async def sentence(self, sentence: Sentence) -> None:
        await self.sink.sentence(sentence)

    async def play(self, chunk: AudioChunk) -> None:
        await self.sink.play(chunk)

    def clear(self) -> int:
        return self.sink.clear()

    def pause(self) -> None:
        self.sink.pause()

    def resume(self) -> None:
        self.sink.resume()

    async def drain(self) -> None:
        await self.sink.drain()

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        await self.sink.end_turn(turn_id, interrupted, spoken_text, timings)

    async def aclose(self) -> None:
        pass  # the shared sink is closed once, by its owner


def voiced(sinks: Sequence[OutputSink], character: str, solo: bool) -> tuple[OutputSink, ...]:
    """The sinks of one character's turns: those that show who speaks told her name."""
    if solo:
        return tuple(sinks)
    return tuple(Voiced(s, character) if isinstance(s, Attributed) else s for s in sinks)
