"""One reply in flight: generate, cut into sentences, moderate, synthesize ahead, deliver in order.

The three stages run as one task group joined by small bounded queues, so generation runs at most
about two sentences ahead of speech. Cancelling the turn stops all three together; the record then
keeps exactly what the listener heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import game
from runtime.events import (
    AudioChunk,
    ChatMessage,
    InputEvent,
    InputKind,
    Persona,
    Prompt,
    PromptContext,
    Sentence,
    Stage,
    TurnRecord,
    TurnStatus,
    input_text,
    viewer_key,
)
from runtime.game import GameSettings
from runtime.moderation import Moderator, Verdict
from runtime.ports import (
    Clock,
    Games,
    MemoryStore,
    ModelUnavailable,
    OutputSink,
    PersonaModel,
    Preparing,
    Synthesizer,
)
from runtime.sentences import SentenceCutter, looping

log = logging.getLogger(__name__)
# a prompt past this share of its budget: the next (this exchange longer) would be trimmed by the
# budget, one exchange at a time; the history is trimmed in a block instead, and prepared so
NEAR_BUDGET = 0.85


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnSettings:
    first_sentence_min_chars: int = 30
    max_sentence_chars: int = 220
    sentences_ahead: int = 2  # how many cut sentences may wait for the synthesizer
    max_sentences: int = 3  # a reply ends after this many whole sentences (0: when the model stops)
    expressions: frozenset[str] | None = None  # the character's expression tags (None: any bracketed word)
    recall_k: int = 3
    model_stall_s: float = 30.0  # no text from the model for this long: the reply is given up
    tts_stall_s: float = 15.0  # no audio from the voice for this long: the sentence goes unvoiced
    fallback_line: str = "Sorry, my thoughts got tangled. Ask me again?"  # said when the model fails or stalls ("": the turn just ends)


class ModelStalled(RuntimeError):
    """The model sent no text for longer than TurnSettings.model_stall_s."""


class CannedReply:
    """A PersonaModel that says a fixed line: templated thanks, with no model in the loop."""

    def __init__(self, text: str, name: str = "template") -> None:
        self.text = text
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def adapter(self) -> str | None:
        return None

    @property
    def traits(self) -> Mapping[str, float]:
        return {}

    def render(self, context: PromptContext) -> Prompt:
        messages = (ChatMessage("user", input_text(context.inputs)),)
        return Prompt(self.text, messages, 0)

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        yield self.text

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        raise ValueError("a canned reply cannot choose game actions")

    async def aclose(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Cast:
    """Everything a turn works with; the director holds one and hands it to each turn."""

    persona: Persona
    model: PersonaModel
    synthesizer: Synthesizer
    playout: OutputSink  # the one sink that paces the turn (the speakers)
    memory: MemoryStore
    moderator: Moderator
    clock: Clock
    observers: tuple[OutputSink, ...] = ()  # sinks that follow along (avatar, terminal)
    settings: TurnSettings = TurnSettings()
    games: Games | None = None  # the games it plays, when the game API is on
    game_settings: GameSettings = GameSettings()


@dataclass(slots=True)
class _Spoken:
    """Delivery accounting of one sentence: how much audio went to the speakers."""

    sentence: Sentence
    samples: int = 0
    complete: bool = False  # all its audio has been handed over


class TurnHandle:
    """Runs one turn. `await handle.run()` returns its TurnRecord, also when it was interrupted."""

    def __init__(
        self, turn_id: str, inputs: tuple[InputEvent, ...], history: Sequence[ChatMessage], cast: Cast,
        history_limit: int = 0, ahead: Callable[[str], None] | None = None, hold: asyncio.Event | None = None,
    ) -> None:
        self.turn_id = turn_id
        self.inputs = inputs
        self.history = tuple(history)
        # the oldest history messages the prompt's budget left out (1 when it came near the budget):
        # the director trims a block of history after this turn
        self.history_dropped = 0
        # history_messages when this exchange goes into the history (the next prompt starts with it,
        # and is prepared while she speaks); 0: it does not
        self.history_limit = history_limit
        # given the reply as planned, prepares whoever speaks next (a duo's other character);
        # None: this character's own next prompt is prepared
        self.ahead = ahead
        # set when this turn may be heard: until then it generates and voices its first sentence
        # but shows and plays nothing and is not recorded (a duo's next line, while the one it
        # answers is still spoken); None: at once
        self.hold = hold
        self._opened = False  # recorded and its sinks told (at once, or when the hold is lifted)
        self._discarded = False
        self.cast = cast
        self.clock = cast.clock
        self.settings = cast.settings
        self.playout = cast.playout
        self.observers = cast.observers
        self.record = TurnRecord(
            turn_id=turn_id,
            inputs=inputs,
            persona=cast.persona.name,
            model=cast.model.name,
            adapter=cast.model.adapter,
        )
        self._t0 = min(e.received_at for e in inputs)
        self._generated: list[str] = []
        self._delivered: list[_Spoken] = []
        self._moderated: list[str] = []
        self._planned: list[str] = []  # every sentence queued to be said, in order
        self._work: asyncio.Task[None] | None = None
        self._cancel_reason: str | None = None
        self._failure: str | None = None  # the model failed and the fallback line was said
        self._paused = False
        self.mark(Stage.INPUT_RECEIVED, at=self._t0)

    @property
    def priority(self) -> int:
        return max(e.priority for e in self.inputs)

    def mark(self, stage: Stage, at: float | None = None) -> None:
        """Record when a stage was first reached, in seconds since the input arrived."""
        if stage not in self.record.timings:
            now = self.clock.now() if at is None else at
            self.record.timings[stage] = round(now - self._t0, 6)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Hold the sound at once (someone started talking); resume() or cancel() follows."""
        if not self._paused:
            self._paused = True
            for sink in (self.playout, *self.observers):
                sink.pause()

    def resume(self) -> None:
        """The talking turned out to be nothing: go on where the sound was held."""
        if self._paused:
            self._paused = False
            self.record.false_interruptions += 1
            for sink in (self.playout, *self.observers):
                sink.resume()

    def discard(self) -> None:
        """A held turn that will not be heard (what it answers was cut, or chat came first): it
        stops, and leaves no trace: no record, nothing on the sinks."""
        if self.hold is not None and not self.hold.is_set():
            self._discarded = True
            self.cancel("discarded")
            self.hold.set()  # wakes whatever waits for it, to find the turn discarded

    def cancel(self, reason: str) -> None:
        """Interrupt the turn: generation, synthesis and playback stop together."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        if self._work is not None:
            self._work.cancel()

    async def run(self) -> TurnRecord:
        self._work = asyncio.create_task(self._run(), name=f"turn-{self.turn_id[:8]}")
        try:
            await self._work
        except asyncio.CancelledError:
            outer = asyncio.current_task()
            if self._cancel_reason is None or (outer is not None and outer.cancelling()):
                self._cancel_reason = self._cancel_reason or "shutdown"
                await self._finish(TurnStatus.INTERRUPTED)
                raise
            await self._finish(TurnStatus.INTERRUPTED)
        except ModelUnavailable as exc:  # the backend has said so already (once, not every turn)
            log.info("turn not answered: the model is unavailable", extra={"turn_id": self.turn_id})
            self.record.error = f"ModelUnavailable: {exc}"
            await self._finish(TurnStatus.FAILED)
        except Exception as exc:  # noqa: BLE001 - a failed turn is logged, the character goes on
            log.exception("turn failed", extra={"turn_id": self.turn_id})
            self.record.error = f"{type(exc).__name__}: {exc}"
            await self._finish(TurnStatus.FAILED)
        else:
            if self._failure is not None:  # the fallback line was said instead
                self.record.error = self._failure
                await self._finish(TurnStatus.FAILED)
            else:
                await self._finish(TurnStatus.COMPLETE)
        return self.record

    async def _run(self) -> None:
        inputs = self.inputs
        if inputs[0].kind is InputKind.GAME_FORCE and self.cast.games is not None:
            outcome = await self._act(inputs[0], self.cast.games)
            if not outcome.tried or not self.cast.game_settings.speak:
                await self.cast.memory.remember(self.record)
                return
            inputs = (dataclasses.replace(inputs[0], text=f"{inputs[0].text}\n{outcome.summary()}"),)
        query = input_text(inputs)
        viewer = next((key for e in inputs if (key := viewer_key(e))), None)
        memories = (await self.cast.memory.recall(query, self.settings.recall_k, viewer)
                    if self.settings.recall_k else [])
        context = PromptContext(self.cast.persona, inputs, self.history, tuple(memories))
        prompt = await asyncio.to_thread(self.cast.model.render, context)
        self.record.prompt = prompt.text
        self.record.messages = prompt.messages
        near = prompt.budget and prompt.tokens > NEAR_BUDGET * prompt.budget
        self.history_dropped = prompt.history_dropped or int(bool(near))
        kept = memories[: len(memories) - prompt.memories_dropped]
        self.record.recalled = tuple(m.id for m in kept if m.id > 0)  # a viewer's profile is no memory row
        self.mark(Stage.PROMPT_READY)
        if self.hold is None:
            await self._open()

        sentences: asyncio.Queue[Sentence | None] = asyncio.Queue(self.settings.sentences_ahead)
        audio: asyncio.Queue[tuple[Sentence, asyncio.Queue[AudioChunk | None]] | None] = asyncio.Queue(1)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._generate(prompt, sentences), name="turn-generate")
                tg.create_task(self._synthesize(sentences, audio), name="turn-synthesize")
                tg.create_task(self._deliver(audio) if self.hold is None else self._held(audio), name="turn-deliver")
        except* ModelUnavailable as group:
            raise group.exceptions[0] from None

    async def _open(self) -> None:
        """The turn is on: recorded, and its sinks told."""
        self._opened = True
        await self.cast.memory.remember(self.record)
        for sink in (self.playout, *self.observers):
            await sink.begin_turn(self.turn_id, self.inputs)

    async def _held(self, audio: asyncio.Queue[tuple[Sentence, asyncio.Queue[AudioChunk | None]] | None]) -> None:
        """Delivery once the hold is lifted (generation and synthesis go on meanwhile, as far as
        their queues let them)."""
        assert self.hold is not None
        await self.hold.wait()
        if self._discarded:
            return
        await self._open()
        await self._deliver(audio)

    async def _act(self, event: InputEvent, games: Games) -> game.Outcome:
        """A game's force: choose and take an action before anything is said."""
        acted = False
        try:
            outcome = await game.act(event, PromptContext(self.cast.persona, self.inputs, self.history),
                                     self.cast.model, games, self.cast.game_settings)
            self.record.actions = outcome.tried
            acted = bool(outcome.tried)  # taken, or given up after the retries
            return outcome
        finally:
            games.force_done(str(event.meta.get("force_id")), acted)

    async def _generate(self, prompt: Prompt, out: asyncio.Queue[Sentence | None]) -> None:
        cutter = SentenceCutter(
            self.turn_id, self.settings.first_sentence_min_chars, self.settings.max_sentence_chars,
            self.settings.expressions,
        )
        said: set[str] = set()  # the sentences so far, as words: a repeat means the model is looping
        try:
            async with contextlib.aclosing(self.cast.model.stream(prompt)) as stream:
                while True:
                    try:
                        async with asyncio.timeout(self.settings.model_stall_s):
                            piece = await anext(stream, None)
                    except TimeoutError:
                        raise ModelStalled(f"no text from the model for {self.settings.model_stall_s:g} s") from None
                    if piece is None:
                        await self._pass_on(cutter.flush(), out)
                        break
                    if not self._generated:  # the model and adapter that generated it (they may change between turns)
                        self.record.model, self.record.adapter = self.cast.model.name, self.cast.model.adapter
                        self.record.traits = dict(self.cast.model.traits)
                    self.mark(Stage.FIRST_TOKEN)
                    self._generated.append(piece)
                    cut = cutter.feed(piece)
                    fresh = [c for c in cut if not _repeats(c, said)]
                    if not await self._pass_on(fresh, out) or len(fresh) < len(cut):
                        break
                    if self.settings.max_sentences and cutter.ended >= self.settings.max_sentences:
                        break  # closing the stream stops the model: small models run on and on
        except Exception as exc:
            line = self.settings.fallback_line
            if not line:
                raise
            # the model broke or stalled: what was cut is said, then the fallback line; the turn is
            # recorded as failed (never trained on)
            self._failure = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, ModelUnavailable):  # that one the backend has said already
                log.warning("the model failed mid-reply; saying the fallback line",
                            extra={"turn_id": self.turn_id, "error": self._failure})
            rest = cutter.flush()
            await self._pass_on([*rest, *cutter.feed(line), *cutter.flush()], out)
        if cutter.placeholders:
            log.info("sentences with a template's placeholder not said",
                     extra={"turn_id": self.turn_id, "sentences": cutter.placeholders})
        await out.put(None)

    async def _pass_on(self, cut: list[Sentence], out: asyncio.Queue[Sentence | None]) -> bool:
        """Moderate and queue sentences; False when moderation ends the reply."""
        for sentence in cut:
            verdict, phrase = self.cast.moderator.check(sentence.text)
            if verdict is not Verdict.SPEAK:
                self._moderated.append(sentence.text)
                log.warning(
                    "sentence held back by moderation",
                    extra={"turn_id": self.turn_id, "phrase": phrase, "verdict": str(verdict)},
                )
                if self.cast.moderator.replacement:  # said instead, so the reply does not just stop
                    self.mark(Stage.FIRST_SENTENCE)
                    self._planned.append(self.cast.moderator.replacement)
                    await out.put(Sentence(sentence.turn_id, sentence.seq, self.cast.moderator.replacement))
                if verdict is Verdict.STOP:
                    return False
                continue
            self.mark(Stage.FIRST_SENTENCE)
            self._planned.append(sentence.text)
            await out.put(sentence)
        return True

    async def _synthesize(
        self,
        inp: asyncio.Queue[Sentence | None],
        out: asyncio.Queue[tuple[Sentence, asyncio.Queue[AudioChunk | None]] | None],
    ) -> None:
        while (sentence := await inp.get()) is not None:
            chunks: asyncio.Queue[AudioChunk | None] = asyncio.Queue()
            await out.put((sentence, chunks))
            try:
                if sentence.text:
                    voice = self.cast.synthesizer.synthesize(sentence)
                    try:
                        while True:
                            async with asyncio.timeout(self.settings.tts_stall_s):
                                chunk = await anext(voice, None)
                            if chunk is None:
                                break
                            chunks.put_nowait(chunk)
                    finally:
                        if (aclose := getattr(voice, "aclose", None)) is not None:
                            await aclose()  # the engine's process or thread ends with it
            except TimeoutError:
                log.error("the voice stalled; sentence shown without (the rest of its) audio",
                          extra={"turn_id": self.turn_id, "seq": sentence.seq, "stall_s": self.settings.tts_stall_s})
            except Exception:  # noqa: BLE001 - one bad sentence loses its voice, not the turn
                log.exception("synthesis failed; sentence shown without audio",
                              extra={"turn_id": self.turn_id, "seq": sentence.seq})
            finally:
                chunks.put_nowait(None)
        self._prepare_next()
        await out.put(None)

    def _prepare_next(self) -> None:
        """Every sentence is synthesized, the last still being spoken: let the model compute the
        start of the next prompt (this exchange appended to the history, as the director will) now,
        instead of when the next input arrives. If she is cut off, what was heard differs from the
        plan, and the next prompt reuses what still matches."""
        model = self.cast.model
        said = " ".join(t for t in self._planned if t)
        if not said:
            return
        if self.ahead is not None:
            try:
                self.ahead(said)
            except Exception:  # noqa: BLE001 - an optimisation: the next reply computes it all instead
                log.exception("the next turn could not be prepared", extra={"turn_id": self.turn_id})
            return
        if not self.history_limit or not isinstance(model, Preparing):
            return
        history = trimmed((*self.history, ChatMessage("user", input_text(self.inputs)), ChatMessage("assistant", said)),
                          self.history_limit, self.history_dropped)
        try:
            model.prepare(PromptContext(self.cast.persona, (), history))
        except Exception:  # noqa: BLE001 - an optimisation: the next reply computes it all instead
            log.exception("the next prompt could not be prepared", extra={"turn_id": self.turn_id})

    async def _deliver(
        self, inp: asyncio.Queue[tuple[Sentence, asyncio.Queue[AudioChunk | None]] | None]
    ) -> None:
        while (item := await inp.get()) is not None:
            sentence, chunks = item
            spoken = _Spoken(sentence)
            self._delivered.append(spoken)
            for sink in (self.playout, *self.observers):
                await sink.sentence(sentence)
            while (chunk := await chunks.get()) is not None:
                self.mark(Stage.FIRST_AUDIO)
                for sink in self.observers:
                    await sink.play(chunk)
                spoken.samples += chunk.samples
                await self.playout.play(chunk)
            spoken.complete = True
        await self.playout.drain()
        if any(s.samples for s in self._delivered):
            self.mark(Stage.LAST_AUDIO)

    async def _finish(self, status: TurnStatus) -> None:
        if self.hold is not None and not self._opened and not self._discarded:
            if status is TurnStatus.INTERRUPTED:
                return  # stopped (shut down) before it could be heard: as if discarded
            await self.hold.wait()  # a held turn that failed: it ends as any other once it may be heard
            if not self._discarded:
                await self._open()
        if self._discarded:
            return  # never heard: nothing to record, nothing the sinks were told
        unheard = 0
        if status is not TurnStatus.COMPLETE:
            unheard = self.playout.clear()
            for sink in self.observers:
                sink.clear()
        rec = self.record
        rec.status = status
        rec.generated_text = "".join(self._generated)
        rec.moderated = tuple(self._moderated)
        rec.spoken_text, cut_at = _heard(self._delivered, unheard, complete=status is TurnStatus.COMPLETE)
        if status is TurnStatus.INTERRUPTED:
            rec.interrupted_at = cut_at
            rec.interrupt_reason = self._cancel_reason
        for sink in (self.playout, *self.observers):
            try:
                await sink.end_turn(self.turn_id, status is not TurnStatus.COMPLETE, rec.spoken_text, dict(rec.timings))
            except Exception:  # noqa: BLE001 - a broken sink must not lose the record
                log.exception("sink failed to end the turn", extra={"turn_id": self.turn_id})
        await self.cast.memory.remember(rec)


def _repeats(sentence: Sentence, said: set[str]) -> bool:
    """True if the sentence says again, word for word, one said before in this reply, or goes
    round in circles itself."""
    if looping(sentence.text):
        return True
    words = " ".join(re.findall(r"\w+", sentence.text.lower()))
    if not words:
        return False
    if words in said:
        return True
    said.add(words)
    return False


def trimmed(history: Sequence[ChatMessage], limit: int, dropped: int = 0) -> tuple[ChatMessage, ...]:
    """The history kept after a turn: over `limit` messages (or when the prompt's budget left
    `dropped` out, or came near it), the oldest go in a block, at least half of `limit`, starting
    again at a viewer's line. So the conversation part of the prompt only grows at its end for
    several turns, and its cached keys and values are reused, instead of shifting by one exchange
    every turn; the director keeps this, and the turn prepares the next prompt's start with it."""
    history = tuple(history)
    over = len(history) - max(limit, 0)
    if over <= 0 and not dropped:
        return history
    n = min(len(history), max(over, dropped, limit // 2))
    while n < len(history) and history[n].role != "user":
        n += 1
    return history[n:]


def _heard(delivered: list[_Spoken], unheard: int, complete: bool) -> tuple[str, int | None]:
    """The text the listener heard, and the seq of the sentence where speech was cut.

    `unheard` samples are taken off the end of what was handed to the speakers; a sentence cut
    part-way keeps the share of its words that matches the share of its audio that was heard.
    """
    if complete:
        return " ".join(s.sentence.text for s in delivered if s.sentence.text), None
    heard_parts: list[str] = []
    remaining = sum(s.samples for s in delivered) - unheard
    cut_at: int | None = None
    for s in delivered:
        if not s.sentence.text:
            continue
        if s.complete and s.samples and remaining >= s.samples:
            heard_parts.append(s.sentence.text)
            remaining -= s.samples
            continue
        cut_at = s.sentence.seq
        if s.samples and remaining > 0:
            words = s.sentence.text.split()
            # an unfinished sentence's length is not known yet; its heard share is a guess
            share = remaining / s.samples if s.complete else 0.0
            keep = int(len(words) * min(share, 1.0))
            if keep:
                heard_parts.append(" ".join(words[:keep]))
        break
    return " ".join(heard_parts), cut_at
