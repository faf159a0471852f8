"""The ports: what the runtime asks of the outside world. Plugins, the model and memory implement
them; the director and the turn only ever talk to these.

Layer 0: standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from runtime.events import (
    ActionResult,
    ActionSpec,
    AudioChunk,
    ChatMessage,
    InputEvent,
    Memory,
    Prompt,
    PromptContext,
    Sentence,
    TurnRecord,
)


class Clock(Protocol):
    """Time, injected so that tests can run on virtual time."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Worker:
    """One long-lived daemon thread that runs blocking jobs in the order given: a model's
    generations, a voice's synthesis. A new thread per reply or sentence cost a thread start each
    time and spread the work's memory over more of glibc's per-thread malloc arenas, where freed
    memory stays fragmented (the soak's RSS climbed in steps); one thread per engine does neither.

    The thread starts with the first job and ends on `close()`; an owner calls that from
    `weakref.finalize`, so a dropped engine does not leave its thread behind.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], threading.Event] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last: threading.Event | None = None

    def submit(self, job: Callable[[], object]) -> threading.Event:
        """Queue `job` (it should catch its own errors); the event is set when it has ended."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=_serve, args=(self._jobs,), name=self.name, daemon=True)
                self._thread.start()
            self._jobs.put((job, done))
            self._last = done
        return done

    def idle(self, timeout: float | None = None) -> bool:
        """Wait (up to `timeout` seconds) for every job given so far to end; True if they have."""
        last = self._last
        return last is None or last.wait(timeout)

    @property
    def busy(self) -> bool:
        last = self._last
        return last is not None and not last.is_set()

    def close(self) -> None:
        """End the thread once the jobs already queued have run."""
        self._jobs.put(None)


def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], object], threading.Event] | None]) -> None:
    while (item := jobs.get()) is not None:
        job, done = item
        try:
            job()
        except BaseException:  # noqa: BLE001 - jobs hand their errors over themselves; the thread goes on
            logging.getLogger(__name__).exception("a job on a worker thread failed")
        finally:
            done.set()
        del item, job, done  # nothing of a finished job stays referenced while waiting for the next


async def cancel_and_wait(task: asyncio.Task[Any] | asyncio.Future[Any] | None) -> None:
    """Cancel a task (None: nothing) and wait until it has ended; its CancelledError is the end
    expected, anything else it raises comes through."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


T = TypeVar("T")


class _Mark(enum.Enum):
    ITEM = 1
    FAILED = 2
    ENDED = 3


class ThreadStream(Generic[T]):
    """The one bridge from a worker thread to asyncio: the thread `put`s items, then `end`s (or
    `fail`s with an error); the event loop reads them with `async for` as they come (the model's
    tokens, a voice's audio). `stop` is set once the reader is done, at the end or by `close()`
    when it leaves early: the producer checks it between items and stops.

    Made on the event loop's thread; put, end and fail are safe from any thread, and once the loop
    has closed (the process is exiting) they do nothing."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[_Mark, Any]] = asyncio.Queue()
        self.stop = threading.Event()

    def put(self, item: T) -> None:
        self._send(_Mark.ITEM, item)

    def fail(self, error: BaseException) -> None:
        """The reader raises `error` after the items put before it."""
        self._send(_Mark.FAILED, error)

    def end(self) -> None:
        self._send(_Mark.ENDED, None)

    def close(self) -> None:
        """The reader is done (it may have left early): tell the producer to stop."""
        self.stop.set()

    def _send(self, mark: _Mark, value: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (mark, value))

    def __aiter__(self) -> ThreadStream[T]:
        return self

    async def __anext__(self) -> T:
        if self.stop.is_set():
            raise StopAsyncIteration
        mark, value = await self._queue.get()
        if mark is _Mark.ITEM:
            item: T = value
            return item
        self.stop.set()
        if mark is _Mark.FAILED:
            raise value
        raise StopAsyncIteration


@runtime_checkable
class Source(Protocol):
    """Something that produces inputs: `async for event in source`, then `await source.aclose()`."""

    name: str

    def __aiter__(self) -> AsyncIterator[InputEvent]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Controllable(Protocol):
    """A source that obeys control commands (a microphone: mute, push-to-talk)."""

    def control(self, command: str) -> bool:
        """Act on a Control command; False if it is not one for this source."""
        ...


class ModelUnavailable(RuntimeError):
    """The language model cannot answer now (its server is down or too slow). `retry_at` is the
    monotonic time before which asking again is pointless (None: any time)."""

    def __init__(self, message: str, retry_at: float | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class PersonaModel(Protocol):
    """The character's language model. `stream` and `json` raise ModelUnavailable when the model
    cannot be reached; a caller may then ask another one."""

    @property
    def name(self) -> str: ...

    @property
    def adapter(self) -> str | None: ...

    @property
    def traits(self) -> Mapping[str, float]:
        """The trait sliders' settings replies are generated with now (those not at 0)."""
        ...

    def render(self, context: PromptContext) -> Prompt:
        """The exact prompt for this context, within the model's token budget."""
        ...

    def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        """Text pieces as they are generated. Closing the generator stops generation."""
        ...

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        """A JSON document valid against `schema` (schema-constrained decoding); ValueError if
        the schema cannot be used or no complete document came."""
        ...

    async def aclose(self) -> None:
        """Let go of what the model holds open (a server's connections); the character is done."""
        ...


@runtime_checkable
class Preparing(Protocol):
    """A PersonaModel that can compute the start of its next prompt ahead of time (the local
    backend's key/value cache); the turn asks it to while the reply's last words are spoken."""

    def prepare(self, context: PromptContext) -> None:
        """Compute, when nothing is being generated, what the prompt that starts with `context`'s
        persona and history (its inputs are ignored) needs, so the next reply computes only what
        is new. Returns at once; a generation asked meanwhile goes first."""
        ...


class Games(Protocol):
    """The games the character plays (the Neuro game API server): what it may do, and doing it."""

    def actions(self, game: str, names: Sequence[str]) -> list[ActionSpec]:
        """The named actions the game has registered now (gone ones are left out)."""
        ...

    def context(self, game: str) -> list[str]:
        """What the game has told the character lately, oldest first."""
        ...

    async def act(self, game: str, name: str, data: str | None) -> ActionResult:
        """Send an action (data: a JSON document, or None) and wait for the game's result."""
        ...

    def force_done(self, force_id: str, acted: bool) -> None:
        """A force turn is over: acted (or given up), or to be asked again later (not acted)."""
        ...


@runtime_checkable
class RecallAhead(Protocol):
    """A MemoryStore that can start on a recall's query before it is asked (its embedding)."""

    def recall_ahead(self, text: str) -> None:
        """`text` will be recalled for soon: start the work that does not depend on what is
        stored (embedding it), in the background. Returns at once."""
        ...


@runtime_checkable
class KeepsHeard(Protocol):
    """A MemoryStore that keeps the conversation as one of several characters heard it, across
    restarts (the others' lines are in no turn of hers)."""

    def keep_heard(self, history: Sequence[ChatMessage]) -> None:
        """Keep it (in the background)."""
        ...

    async def heard(self, limit: int) -> list[ChatMessage] | None:
        """What was kept, at most `limit` messages; None when there is none or her turns since
        make it stale."""
        ...


class MemoryStore(Protocol):
    """The local store: the interaction log and what the character remembers."""

    def log_input(self, event: InputEvent) -> Awaitable[None]:
        """Queue an input for writing; the awaitable resolves once it is committed."""
        ...

    def learn(self, event: InputEvent) -> None:
        """What a viewer's chat line teaches about them (their profile, facts they state about
        themselves). Queued. The director calls it for what it accepts, not for dropped lines."""
        ...

    async def remember(self, record: TurnRecord) -> None:
        """Write (or update) the record of a turn. Queued; never stalls the caller."""
        ...

    async def recall(self, text: str, k: int, viewer: str | None = None) -> list[Memory]:
        """Up to k memories for this text; with a viewer ("platform:user_id"), what is known about
        them comes first."""
        ...

    async def recent_history(self, limit: int) -> list[ChatMessage]:
        """The last `limit` messages of the conversation as it was heard, oldest first."""
        ...


class Synthesizer(Protocol):
    """Text to speech."""

    def synthesize(self, sentence: Sentence) -> AsyncIterator[AudioChunk]: ...


class OutputSink(Protocol):
    """Somewhere a turn is delivered: speakers, an avatar socket, a terminal.

    Calls arrive in order for each turn: begin_turn, then for each sentence `sentence` followed by
    its audio chunks through `play`, then end_turn. A pacing sink (the speakers) returns from
    `play` only when it is ready for the next chunk; every other sink must return at once.
    """

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None: ...

    async def sentence(self, sentence: Sentence) -> None: ...

    async def play(self, chunk: AudioChunk) -> None: ...

    def clear(self) -> int:
        """Stop sound at once. Returns how many samples were handed over but never heard."""
        ...

    def pause(self) -> None:
        """Hold the sound where it is (someone started talking); `play` waits until resume."""
        ...

    def resume(self) -> None: ...

    async def drain(self) -> None:
        """Wait until everything handed over has been heard."""
        ...

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Attributed(Protocol):
    """A sink that shows who is speaking (subtitles, the avatar channel). With several
    characters on one stream, `character` is set to the speaker before each of her turns."""

    character: str


class FollowingSink:
    """A base for sinks that follow a turn without pacing it (subtitles, chat): every method of
    OutputSink does nothing; a subclass overrides what it needs."""

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        pass

    async def sentence(self, sentence: Sentence) -> None:
        pass

    async def play(self, chunk: AudioChunk) -> None:
        pass

    def clear(self) -> int:
        return 0

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        pass

    async def aclose(self) -> None:
        pass
