"""Tests on a virtual timeline: a clock that moves only when the test moves it, a sink that keeps
every call in order with the time it came, and a script of events played at exact times; the way
the best voice-agent suites test turn-taking. With it a test says "speech from 0.5 s to 2.5 s, a
barge-in at 5 s" and asserts the exact times and order of what the character did.

The director, the turn, the inbox, the sentence cutter, moderation and the pacing sink
(SilentSpeakers) are the real ones. The model, the voice and the store are small port
implementations here, because SQLite, espeak-ng and a language model run on real time and
threads and cannot follow a virtual clock; their real behaviour has its own tests. Thread hops
(asyncio.to_thread) run inline, so nothing happens behind the clock's back.

Also here: `until()`, the one way a test on real or fast time waits for something to happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from plugins.audio import make_chunk
from plugins.speakers_silent import SilentSpeakers
from runtime.director import Director, DirectorSettings
from runtime.events import (
    AudioChunk,
    ChatMessage,
    InputEvent,
    InputKind,
    Memory,
    Persona,
    Priority,
    Prompt,
    PromptContext,
    Sentence,
    TurnRecord,
    input_text,
)
from runtime.inbox import Inbox
from runtime.moderation import Moderator
from runtime.turn import Cast, TurnSettings

RATE = 16_000


async def until(predicate: Callable[[], object], timeout: float = 60.0, every: float = 0.02) -> None:
    """Wait (real time) until predicate() is true (it may be async: a browser page's state); fail
    after `timeout` seconds."""
    async def true() -> bool:
        result = predicate()
        return bool(await result if inspect.isawaitable(result) else result)

    try:
        async with asyncio.timeout(timeout):
            while not await true():
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"not true after {timeout} s") from None


class VirtualClock:
    """The runtime's Clock port on virtual time: now() moves only in advance(), which wakes the
    sleepers in the order they are due and lets everything they start run before time moves on."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._order), wake))
        await wake

    async def settle(self) -> None:
        """Let every task that can run, run, until all wait on the clock or on each other."""
        for _ in range(200):
            await asyncio.sleep(0)

    async def advance(self, to: float) -> None:
        """Move time to `to`, one due sleeper at a time."""
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= to:
            due, _, wake = heapq.heappop(self._sleepers)
            if wake.done():  # its sleeper was cancelled
                continue
            self.t = max(self.t, due)
            wake.set_result(None)
            await self.settle()
        self.t = max(self.t, to)
        await self.settle()


@dataclass(frozen=True, slots=True)
class Call:
    at: float
    what: str  # begin_turn, sentence, play, pause, resume, clear, end_turn
    detail: Any = None


class RecordingSink:
    """An OutputSink that follows the turn (it does not pace it) and keeps every call it gets, in
    order, with the clock's time."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.calls: list[Call] = []

    def _note(self, what: str, detail: Any = None) -> None:
        self.calls.append(Call(round(self.clock.now(), 6), what, detail))

    def of(self, *what: str) -> list[Call]:
        return [c for c in self.calls if c.what in what]

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        self._note("begin_turn", input_text(inputs))

    async def sentence(self, sentence: Sentence) -> None:
        self._note("sentence", sentence.text)

    async def play(self, chunk: AudioChunk) -> None:
        self._note("play", (chunk.seq, chunk.index))

    def clear(self) -> int:
        self._note("clear")
        return 0

    def pause(self) -> None:
        self._note("pause")

    def resume(self) -> None:
        self._note("resume")

    async def drain(self) -> None:
        pass

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        self._note("end_turn", (interrupted, spoken_text))

    async def aclose(self) -> None:
        pass


class TimelineModel:
    """A PersonaModel that says `reply` a word every `word_s` seconds of the clock."""

    name = "timeline"
    adapter = None
    traits: dict[str, float] = {}

    def __init__(self, clock: VirtualClock, reply: str, word_s: float = 0.05) -> None:
        self.clock, self.reply, self.word_s = clock, reply, word_s

    def render(self, context: PromptContext) -> Prompt:
        messages = (ChatMessage("system", f"You are {context.persona.name}."), *context.history,
                    ChatMessage("user", input_text(context.inputs)))
        return Prompt("\n".join(m.content for m in messages), messages, len(messages), context=context)

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        for word in re.findall(r"\S+\s*", self.reply):
            await self.clock.sleep(self.word_s)
            yield word

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        raise NotImplementedError("no game in a timeline test")

    async def aclose(self) -> None:
        pass


class WordVoice:
    """A Synthesizer that gives each word of a sentence `word_s` seconds of quiet audio, one chunk
    per word, at once."""

    def __init__(self, word_s: float = 0.1) -> None:
        self.word_s = word_s

    async def synthesize(self, sentence: Sentence) -> AsyncIterator[AudioChunk]:
        for index, _ in enumerate(sentence.text.split()):
            yield make_chunk(sentence.turn_id, sentence.seq, index, b"\x01\x00" * int(RATE * self.word_s), RATE)


@dataclass
class MemoryLog:
    """A MemoryStore in memory: what was logged and remembered, committed at once."""

    inputs: list[InputEvent] = field(default_factory=list)
    records: dict[str, TurnRecord] = field(default_factory=dict)

    def log_input(self, event: InputEvent) -> Awaitable[None]:
        self.inputs.append(event)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def learn(self, event: InputEvent) -> None:
        pass

    async def remember(self, record: TurnRecord) -> None:
        self.records[record.turn_id] = record

    async def recall(self, text: str, k: int, viewer: str | None = None) -> list[Memory]:
        return []

    async def recent_history(self, limit: int) -> list[ChatMessage]:
        return []


@dataclass
class Timeline:
    """A character on virtual time: its director running, the sink recording, the records kept."""

    clock: VirtualClock
    director: Director
    sink: RecordingSink
    memory: MemoryLog
    records: list[TurnRecord]

    async def play(self, *script: tuple[float, list[InputEvent]], until: float) -> None:
        """Hand the director each step's inputs at its time, in time order, then run on to `until`."""
        for t, events in sorted(script, key=lambda step: step[0]):
            await self.clock.advance(t)
            for e in events:
                self.director.submit(e)
            await self.clock.settle()
        await self.clock.advance(until)


Step = tuple[float, list[InputEvent]]


def speech(text: str, start: float, end: float, dbfs: float = -12.0) -> list[Step]:
    """Someone talks from `start` to `end`, as the ears report it: speech started at `start`; at
    `end` the transcript (when words came of it, `text` not empty) and speech ended."""
    said = [InputEvent(InputKind.TRANSCRIPT, text, "mic", end, "you", Priority.HIGH,
                       meta={"onset": start, "duration_s": end - start})] if text else []
    return [(start, [InputEvent(InputKind.SPEECH_STARTED, "", "mic", start, priority=Priority.CRITICAL,
                                meta={"onset": start, "dbfs": dbfs})]),
            (end, [*said, InputEvent(InputKind.SPEECH_ENDED, "", "mic", end, priority=Priority.CRITICAL,
                                     meta={"transcribed": bool(text)})])]


def chat(text: str, at: float, author: str = "ann") -> list[Step]:
    """A chat line arriving at `at`."""
    return [(at, [InputEvent(InputKind.CHAT, text, "twitch", at, author)])]


@contextlib.asynccontextmanager
async def timeline(reply: str, *, word_s: float = 0.05, voice_word_s: float = 0.1,
                   settings: DirectorSettings = DirectorSettings(),
                   turn: TurnSettings = TurnSettings(max_sentences=0)) -> AsyncIterator[Timeline]:
    """A character whose model says `reply` (a word every `word_s`) and whose voice speaks each
    word for `voice_word_s`, on a virtual clock starting at 0. Needs the `inline_threads` fixture."""
    clock = VirtualClock()
    sink = RecordingSink(clock)
    memory = MemoryLog()
    cast = Cast(Persona("Testa"), TimelineModel(clock, reply, word_s), WordVoice(voice_word_s),
                SilentSpeakers(clock), memory, Moderator([]), clock, observers=(sink,), settings=turn)
    records: list[TurnRecord] = []
    director = Director(cast, Inbox(clock), settings=settings, on_turn=records.append)
    task = asyncio.create_task(director.run(), name="timeline-director")
    try:
        yield Timeline(clock, director, sink, memory, records)
    finally:
        director.stop()
        for _ in range(100):  # let it wind down on the clock
            if task.done():
                break
            await clock.advance(clock.now() + 1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio.to_thread runs its function at once, on the loop: nothing moves behind the clock."""

    async def inline(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", inline)
