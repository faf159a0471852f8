"""The director: the one orchestrator. It takes inputs from the sources, logs them, picks what to
answer next, runs one turn at a time and owns interruption."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from runtime.collab import Member, Troupe
from runtime.events import (
    ChatMessage,
    Control,
    InputEvent,
    InputKind,
    Priority,
    PromptContext,
    Stage,
    TurnRecord,
    input_text,
    new_id,
)
from runtime.inbox import Inbox, event_type
from runtime.moderation import ChatFilter
from runtime.ports import Controllable, KeepsHeard, MemoryStore, Preparing, RecallAhead, Source
from runtime.turn import CannedReply, Cast, TurnHandle, trimmed

log = logging.getLogger(__name__)
RECALL_AHEAD = 8  # inputs waiting at most for a new one's query to be embedded as it arrives
GREETING = "greeting"  # meta["event"] of the turn that says the greeting
COMMIT_WAIT_S = 2.0  # how long a reply waits for its input to be stored (a stalled disk: no longer)
MICROPHONE_COMMANDS = {Control.MUTE, Control.UNMUTE, Control.TALK_START, Control.TALK_STOP}


class Activity:
    """Whether the character is busy: a turn is running, or an input waits for one. The director
    keeps it; what runs beside the turns (reflection) reads it so as never to hold a turn up."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.in_turn = False  # from taking an input until its turn is done, even before it has a handle

    def busy(self) -> bool:
        return self.in_turn or len(self.inbox) > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectorSettings:
    history_messages: int = 24  # conversation messages kept for the prompt
    exit_when_sources_end: bool = False  # stop once every source has ended and all is answered
    barge_in: Literal["on", "off", "loud"] = "on"  # does speech during a reply hold it?
    barge_in_min_dbfs: float = -30.0  # with "loud": how loud the speech must be
    idle_after_s: float = 0.0  # talk on its own after this much quiet (0: never)
    idle_min_interval_s: float = 300.0  # and never more often than this
    idle_prompt: str = ("(Nobody has said anything for a while. Say something short to keep the"
                        " stream going: a thought, a question for chat, or what you are doing.)")
    thanks: Mapping[str, str] = field(default_factory=dict)  # event -> template, spoken without the model
    greeting: str = ""  # said without the model when the character starts ("": nothing)


class Director:
    def __init__(
        self,
        cast: Cast,
        inbox: Inbox,
        sources: Sequence[Source] = (),
        settings: DirectorSettings = DirectorSettings(),
        on_turn: Callable[[TurnRecord], None] | None = None,
        chat_filter: ChatFilter | None = None,
        background: Sequence[Callable[[], Coroutine[None, None, None]]] = (),
        activity: Activity | None = None,
        troupe: Troupe | None = None,
    ) -> None:
        # several characters on one stream (runtime/collab.py); one, as it always was
        self.troupe = troupe or Troupe([cast])
        cast = self.troupe.lead.cast
        self.background = tuple(background)  # run beside the turns (reflection), stopped with them
        self.chat_filter = chat_filter
        self.inbox = inbox
        self.sources = tuple(sources)
        self.settings = settings
        self.on_turn = on_turn
        self.current: TurnHandle | None = None
        self._committed: dict[str, Awaitable[None]] = {}
        self._stop = asyncio.Event()
        self._sources_live = len(self.sources)
        self.activity = activity or Activity(inbox)
        self._last_idle = -math.inf
        # with several characters, while one speaks: "turn", the next banter line's whole turn
        # (her reply generated, its first sentence voiced, held until the line has been heard;
        # otherwise her prompt's start); "prompt", only the next speaker's prompt start; "off",
        # each prepares her own next prompt, as one character does (benches compare the three)
        self.ahead: Literal["turn", "prompt", "off"] = "turn"
        self._early: _Early | None = None

    def submit(self, event: InputEvent) -> bool:
        """Take an input from outside: log it at once, queue it, and interrupt if it must."""
        if event.is_signal:
            self._signal(event)
            return True
        if event.kind is InputKind.GAME_CONTEXT and event.meta.get("silent"):
            self.memory.log_input(event)  # logged (and kept by the game API for prompts), not answered
            return True
        if event.kind is InputKind.CHAT and self.chat_filter is not None:
            text, reason = self.chat_filter.screen(event.text)
            if reason is not None:  # logged with the reason, never answered
                self.memory.log_input(dataclasses.replace(event, meta={**event.meta, "dropped": reason}))
                log.info("chat message dropped", extra={"source": event.source, "input_id": event.id,
                                                        "reason": reason})
                return False
            if text != event.text:
                event = dataclasses.replace(event, text=text)
        if event.kind is InputKind.TRANSCRIPT and self.current is not None and self.current.paused:
            self.current.cancel("barge-in")  # they said something: the held reply is over
        hearers = [] if event.is_control else self._store(event)
        accepted = self.inbox.put(event)
        if accepted and hearers and self.cast.settings.recall_k and len(self.inbox) <= RECALL_AHEAD:
            # its recall's query embedded now, not when its turn comes (a flood is left alone)
            for m in hearers:
                if isinstance(m.cast.memory, RecallAhead):
                    m.cast.memory.recall_ahead(input_text((event,)))
        if not accepted:
            log.info("inbox full; input dropped", extra={"source": event.source, "input_id": event.id})
        elif (
            not event.is_control
            and event.priority is Priority.CRITICAL
            and self.current is not None
            and self.current.priority < Priority.CRITICAL
        ):
            self.current.cancel("preempted")
        return accepted

    def _store(self, event: InputEvent) -> list[Member]:
        """Log an input and learn from it in the memory of each character who hears it (a secret
        told to one: hers alone); who heard it."""
        hearers = self.troupe.hearers(event)
        self._committed[event.id] = _all([m.cast.memory.log_input(event) for m in hearers])
        for m in hearers:
            m.cast.memory.learn(event)
        return hearers

    def _signal(self, event: InputEvent) -> None:
        turn = self.current
        if turn is None:
            return
        if event.kind is InputKind.SPEECH_STARTED:
            if self.settings.barge_in == "off":
                return
            level = float(event.meta.get("dbfs", 0.0))
            if self.settings.barge_in == "loud" and level < self.settings.barge_in_min_dbfs:
                return
            turn.pause()
            onset = float(event.meta.get("onset", event.received_at))
            turn.mark(Stage.SPEECH_ONSET, at=onset)
            turn.mark(Stage.BARGE_IN)
            log.info("barge-in: reply held", extra={"turn_id": turn.turn_id,
                     "latency_ms": round((self.cast.clock.now() - onset) * 1000, 1)})
        elif event.kind is InputKind.SPEECH_ENDED and turn.paused and not event.meta.get("transcribed"):
            turn.resume()
            log.info("barge-in came to nothing: reply resumed", extra={"turn_id": turn.turn_id})

    def interrupt(self, reason: str = "operator") -> bool:
        """Stop the turn in flight, if there is one."""
        if self.current is None:
            return False
        self.current.cancel(reason)
        return True

    def stop(self) -> None:
        self._stop.set()

    @property
    def cast(self) -> Cast:
        """The (first) character's cast; set, her next turns run with the new one."""
        return self.troupe.lead.cast

    @cast.setter
    def cast(self, cast: Cast) -> None:
        self.troupe.lead.cast = cast

    @property
    def memory(self) -> MemoryStore:
        """The (first) character's memory store."""
        return self.cast.memory

    @property
    def history(self) -> deque[ChatMessage]:
        """The conversation as the (first) character heard it."""
        return self.troupe.lead.history

    @property
    def busy(self) -> bool:
        """A turn is running or an input is waiting for one."""
        return self.activity.busy()

    async def run(self) -> None:
        """Run until stop() (or, if configured, until every source has ended)."""
        if self.settings.history_messages:
            for m in self.troupe.members:  # each her own conversation, as she heard it
                memory = m.cast.memory
                kept = (await memory.heard(self.settings.history_messages)
                        if not self.troupe.solo and isinstance(memory, KeepsHeard) else None)
                m.history.extend(kept if kept is not None else await memory.recent_history(self.settings.history_messages))
            self._keep()
        if self.troupe.solo and self.settings.greeting and not self.troupe.lead.greeting:
            self.troupe.lead.greeting = self.settings.greeting
        for m in self.troupe.members:  # first, before anyone is answered, in order
            if m.greeting:
                self.inbox.put(InputEvent(InputKind.IDLE, "(the character starts)", "director", self.cast.clock.now(),
                                          priority=Priority.HIGH, meta={"event": GREETING, "to": m.name}))
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._turns(), name="director-turns"),
                tg.create_task(self._controls(), name="director-controls"),
            ]
            tasks += [tg.create_task(self._pump(s), name=f"source-{s.name}") for s in self.sources]
            tasks += [tg.create_task(job(), name=f"background-{i}") for i, job in enumerate(self.background)]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
        await self._drop_early()
        for source in self.sources:
            await source.aclose()

    async def _pump(self, source: Source) -> None:
        try:
            async for event in source:
                self.submit(event)
        except Exception:  # noqa: BLE001 - a broken source is logged; the others go on
            log.exception("source failed", extra={"source": source.name})
        finally:
            self._sources_live -= 1
            self._check_done()

    async def _controls(self) -> None:
        while True:
            event = await self.inbox.get_control()
            if event.text == Control.STOP:
                self.interrupt("stop")
                self.stop()
            elif event.text == Control.INTERRUPT:
                self.interrupt("operator")
            elif not any([s.control(event.text) for s in self.sources if isinstance(s, Controllable)]):
                if event.text in MICROPHONE_COMMANDS:
                    log.warning("there is no microphone to do that with (typed text only)",
                                extra={"command": event.text, "source": event.source})
                else:
                    log.warning("unknown control command", extra={"command": event.text, "source": event.source})

    async def _turns(self) -> None:
        while True:
            if not len(self.inbox):
                self._check_done()
            event = await self._next()
            if self.troupe.stale(event):  # a banter line the operator ended: its held turn goes too
                if self._early is not None and event is self._early.line:
                    await self._drop_early()
                continue
            self.activity.in_turn = True
            try:
                await self._run_turn((event,))
            finally:
                self.activity.in_turn = False

    async def _next(self) -> InputEvent:
        """The next input; after a quiet spell (if configured), a turn of the character's own."""
        s = self.settings
        if s.idle_after_s <= 0:
            return await self.inbox.get()
        while True:
            since_idle = self.cast.clock.now() - self._last_idle
            wait = max(s.idle_after_s, s.idle_min_interval_s - since_idle)
            get = asyncio.create_task(self.inbox.get(), name="director-next")
            nap = asyncio.create_task(self.cast.clock.sleep(wait), name="director-quiet")
            try:
                await asyncio.wait({get, nap}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                nap.cancel()
                if not get.done():
                    get.cancel()
            if get.done() and not get.cancelled():
                return get.result()
            if self.cast.clock.now() - self._last_idle >= s.idle_min_interval_s:
                self._last_idle = self.cast.clock.now()
                return InputEvent(InputKind.IDLE, s.idle_prompt, "director", self.cast.clock.now(),
                                  priority=Priority.LOW)

    async def _run_turn(self, inputs: tuple[InputEvent, ...]) -> None:
        early, self._early = self._early, None
        if early is not None and inputs[0] is not early.line:  # what it answers was not said, or chat came first
            await _drop(early)
            early = None
        await self._stored(inputs)
        speaker = self.troupe.speaker(inputs[0])
        if early is not None and speaker is not early.member:  # the operator picked another meanwhile
            await _drop(early)
            early = None
        kind = event_type(inputs[0])
        turn = early.turn if early is not None else self._turn(speaker, inputs, tuple(speaker.history))
        self.current = turn
        try:
            if early is not None:
                early.hold.set()  # the line it answers has been heard: her reply is
                record = await early.task
            else:
                record = await turn.run()
        finally:
            self.current = None
        now = self.cast.clock.now()
        for event in inputs:
            self.inbox.answered(event.author)
        if inputs[0].kind is InputKind.IDLE:
            self._last_idle = now
        speaker.last_spoke = now
        made = self._early.line if self._early is not None else None
        banter = (self.troupe.banter_after(speaker, inputs, record.spoken_text, now, made) if kind != GREETING
                  else None)
        # a greeting answers nobody: the card's first message opens the chat
        self.troupe.heard(speaker, inputs, record.spoken_text, greeting=kind == GREETING,
                          told=self.troupe.addressed(banter) if banter else None)
        self._keep(turn.history_dropped, speaker)
        if self._early is not None and banter is not self._early.line:  # she was cut, or the banter ended
            await self._drop_early()
        if banter is not None:
            self._banter(banter)
        log.info(
            "turn done",
            extra={"turn_id": record.turn_id, "status": str(record.status), "timings": record.timings},
        )
        if self.on_turn is not None:
            self.on_turn(record)

    async def _stored(self, inputs: tuple[InputEvent, ...]) -> None:
        """The inputs are on disk before any reply starts, unless the disk will not have them."""
        for event in inputs:
            committed = self._committed.pop(event.id, None)
            if committed is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(committed), COMMIT_WAIT_S)
                except Exception as exc:  # noqa: BLE001 - a full or stalled disk must not silence the character
                    log.warning("input not stored yet; answering anyway", extra={"input_id": event.id,
                                                                                 "error": str(exc) or "timed out"})
        self._committed = {k: f for k, f in self._committed.items() if not _done(f)}  # merged or dropped

    def _turn(self, speaker: Member, inputs: tuple[InputEvent, ...], history: tuple[ChatMessage, ...],
              hold: asyncio.Event | None = None) -> TurnHandle:
        """The turn in which `speaker` answers `inputs`, with `history` before them."""
        cast = speaker.cast
        kind = event_type(inputs[0])
        template = speaker.greeting if kind == GREETING else self.settings.thanks.get(kind)
        if template:  # a channel event thanked with a line of the streamer's, not the model
            cast = dataclasses.replace(cast, model=CannedReply(_fill(template, inputs[0])))
        ahead = (None if self.troupe.solo or self.ahead == "off" or kind == GREETING
                 else functools.partial(self._ahead, speaker, inputs))
        return TurnHandle(new_id(), inputs, history, cast,
                          history_limit=self.settings.history_messages if kind != GREETING else 0,
                          ahead=ahead, hold=hold)

    def _ahead(self, speaker: Member, inputs: tuple[InputEvent, ...], said: str) -> None:
        """While `speaker`'s last words are spoken, the next speaker's turn is prepared: if she
        answers those words (banter), her whole turn starts now, held until they have been heard;
        else the start of her prompt (her history with this turn in it, as the troupe will give
        it to her) is computed under her adapter. So the gap between two characters is not spent
        on her prompt and her first sentence."""
        after, history, told = self.troupe.upcoming(speaker, inputs, said)
        dropped = self.current.history_dropped if after is speaker and self.current is not None else 0
        kept = trimmed(history, self.settings.history_messages, dropped)
        if told and self.ahead == "turn" and self._early is None:
            line = self.troupe.line(speaker, after, said, self.cast.clock.now())
            hold = asyncio.Event()
            turn = self._turn(after, (line,), kept, hold=hold)
            self._early = _Early(after, line, turn, hold,
                                 asyncio.create_task(turn.run(), name="director-early-turn"))
            return
        model = after.cast.model
        if self.settings.history_messages and isinstance(model, Preparing):
            model.prepare(PromptContext(after.cast.persona, (), kept))

    async def _drop_early(self) -> None:
        early, self._early = self._early, None
        if early is not None:
            await _drop(early)

    def _keep(self, dropped: int = 0, speaker: Member | None = None) -> None:
        """Each history trimmed in blocks (runtime.turn.trimmed), the speaker's as her turn prepared
        it; with several characters, what each heard is kept across restarts."""
        for m in self.troupe.members:
            m.history = deque(trimmed(m.history, self.settings.history_messages, dropped if m is speaker else 0))
            if speaker is not None and not self.troupe.solo and isinstance(m.cast.memory, KeepsHeard):
                m.cast.memory.keep_heard(m.history)

    def _banter(self, line: InputEvent) -> None:
        """One character's line said to another: her next turn answers it, before chat."""
        hearers = [m for m in self.troupe.members if m.name != line.author]
        self._committed[line.id] = _all([m.cast.memory.log_input(line) for m in hearers])
        if not self.inbox.put(line):
            self.troupe.end_banter()

    def end_banter(self) -> bool:
        """The operator ends the characters' exchange: chat is answered next."""
        had = self.troupe.banter_left > 0 or self.troupe.pending is not None
        self.troupe.end_banter()
        return had

    def _check_done(self) -> None:
        if (
            self.settings.exit_when_sources_end
            and self.sources
            and self._sources_live <= 0
            and not self.activity.in_turn
            and not len(self.inbox)
        ):
            self.stop()


@dataclass(eq=False)
class _Early:
    """The next banter turn, started while the line it answers is still being spoken: her reply
    generated and its first sentence voiced, held until that line has been heard to its end."""

    member: Member
    line: InputEvent
    turn: TurnHandle
    hold: asyncio.Event
    task: asyncio.Task[TurnRecord]


async def _drop(early: _Early) -> None:
    """A held turn that will not be heard: stopped, leaving no trace."""
    early.turn.discard()
    await asyncio.wait({early.task})  # the director's own cancellation still reaches it
    if not early.task.cancelled():
        early.task.exception()  # retrieved: a held turn that failed has nothing to say


def _all(stored: list[Awaitable[None]]) -> Awaitable[None]:
    """One awaitable for an input stored in each hearer's memory."""
    if len(stored) == 1:
        return stored[0]

    async def every() -> None:
        for done in stored:
            await done
    return asyncio.ensure_future(every())


def _done(awaitable: Awaitable[None]) -> bool:
    return bool(getattr(awaitable, "done", lambda: False)())


def _fill(template: str, event: InputEvent) -> str:
    """A thanks template with {name}, {bits}, {months}, {reward}, {viewers} filled in."""
    values = {"name": event.author or "friend", "bits": "", "months": "", "reward": "", "viewers": "",
              **{k: v for k, v in event.meta.items() if isinstance(v, (str, int, float))}}
    try:
        return template.format_map(values)
    except (KeyError, ValueError, IndexError):
        return template
