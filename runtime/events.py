"""The shared vocabulary of Omoide: what flows between sources, the director, the model and sinks.

Layer 0: standard library only. Every other module may import this one.
"""

from __future__ import annotations

import enum
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, TypedDict


class Priority(enum.IntEnum):
    """How urgently an input wants an answer. Higher wins; CRITICAL may interrupt a turn."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


class InputKind(enum.StrEnum):
    CHAT = "chat"  # a typed line: console, Twitch chat, overlay
    TRANSCRIPT = "transcript"  # the final text of something said into the microphone
    SPEECH_STARTED = "speech_started"  # someone started talking (barge-in signal)
    SPEECH_ENDED = "speech_ended"  # they stopped; meta["transcribed"] says if words came of it
    GAME_CONTEXT = "game_context"  # a game told the character what is going on
    GAME_FORCE = "game_force"  # a game requires the character to act now
    CONTROL = "control"  # operator commands: interrupt, mute, stop
    IDLE = "idle"  # nobody said anything for a while: the character may talk on its own


class Control(enum.StrEnum):
    """The text of a CONTROL input. Control never waits behind data."""

    INTERRUPT = "interrupt"  # stop the turn in flight, keep running
    STOP = "stop"  # stop the turn in flight and shut down
    MUTE = "mute"  # the microphone stops listening
    UNMUTE = "unmute"
    TALK_START = "talk_start"  # push-to-talk pressed
    TALK_STOP = "talk_stop"  # push-to-talk released: what was said is final


_seq = itertools.count()


def new_id() -> str:
    return uuid.uuid4().hex


class EventMeta(TypedDict, total=False):
    """What an input carries beyond its text, by who sets it. Every key any layer reads or writes is
    declared here, so the type checker sees each reader and writer; the store logs the whole dict
    as JSON with the input, so a key is also a column of the interaction log."""

    # any source
    event: str  # the input's type for the inbox's rules: "message", "cheer", "follow", "typed", ...
    untrusted: bool  # a viewer wrote it: marked as viewer chat in the prompt, never instructions
    # Twitch (plugins/chat_twitch.py)
    user_id: str | None  # the viewer's id (None: anonymous): the key of what is remembered about them
    message_id: str
    badges: list[str]
    moderator: bool
    vip: bool
    subscriber: bool
    broadcaster: bool
    sub_months: int  # from the subscriber badge
    bits: int  # a cheer
    anonymous: bool  # an anonymous cheer or gift
    tier: str  # a subscription's or gift's tier ("1000", "2000", "3000")
    months: int  # a (re)subscription's months
    count: int  # gifted subscriptions
    reward: str  # a channel-points redemption: the reward's title, id and cost
    reward_id: str
    cost: int
    viewers: int  # a raid's size
    # the inbox (runtime/inbox.py) and the director
    merged: int  # how many viewers said this line (the inbox merged them into one)
    authors: list[str]  # who they were (at most 20)
    dropped: str  # why this input was never answered (only logged)
    to: str  # the character it is for, of several (runtime/collab.py): a banter line's, a greeting's
    # games (plugins/game_neuro.py): context, and a force the character must act on
    game: str  # the game's name
    silent: bool  # context the character only reads, without replying
    force_id: str
    query: str  # what the game asks
    state: str  # the game's state, as it describes it
    action_names: list[str]  # the actions the force allows
    priority: str  # the force's priority as the game sent it: low, medium, high, critical
    # the ears (plugins/stt_whisper.py): clock times are Clock.now() seconds
    onset: float  # when the speech began
    dbfs: float  # how loud it was when it was heard as speech
    duration_s: float  # a transcript's length of speech
    decided_at: float  # when the end of the utterance was decided
    transcribed_at: float  # when its text was ready
    transcribed: bool  # SPEECH_ENDED: words came of it


class ActionAttempt(TypedDict):
    """One game action the character tried for a force (TurnRecord.actions, the log's `actions`)."""

    game: str
    name: str | None  # None: the model gave no valid answer
    data: str | None  # the action's data as JSON text, when it takes any
    success: bool
    message: str  # the game's answer, or why there was no valid answer
    force_id: str | None


@dataclass(frozen=True, slots=True)
class InputEvent:
    """One thing from outside the character."""

    kind: InputKind
    text: str
    source: str  # which plugin produced it: "console", "twitch", "mic", a game's name
    received_at: float  # Clock.now() when it entered the runtime
    author: str | None = None  # viewer or player name, when there is one
    priority: Priority = Priority.NORMAL
    id: str = field(default_factory=new_id)
    meta: EventMeta = field(default_factory=lambda: EventMeta())
    # arrival order, to break priority ties without comparing clocks
    order: int = field(default_factory=lambda: next(_seq), compare=False)

    @property
    def is_control(self) -> bool:
        return self.kind is InputKind.CONTROL

    @property
    def is_signal(self) -> bool:
        """Speech started/ended: acted on at once, never answered as a turn."""
        return self.kind in (InputKind.SPEECH_STARTED, InputKind.SPEECH_ENDED)


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """An action a game lets the character take (Neuro game API): what the model is told, and the
    JSON schema its `data` must match (None: it takes no data)."""

    name: str
    description: str
    schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What a game answered to an action: `success` false means the action was refused (try again)."""

    success: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class Sentence:
    """One speakable chunk of a reply, with the expression tags that were found in it."""

    turn_id: str
    seq: int
    text: str  # what is spoken and shown as the subtitle, tags removed
    expressions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Mono signed 16-bit little-endian PCM of one piece of one sentence."""

    turn_id: str
    seq: int  # the sentence this audio speaks
    index: int  # position of this chunk within its sentence
    pcm: bytes
    rate: int
    envelope: tuple[float, ...] = ()  # volume 0..1 per slice, for lip-sync
    slice_ms: int = 20

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def duration(self) -> float:
        return self.samples / self.rate


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class LoreEntry:
    """A lorebook entry of a character card that enters the prompt by its keys, or always
    (docs/cards.md#lorebooks). Every enabled entry is a memory too, recalled by meaning."""

    content: str
    keys: tuple[str, ...] = ()
    secondary_keys: tuple[str, ...] = ()
    selective: bool = False  # with secondary keys: they must appear too, as `logic` says
    logic: int = 0  # SillyTavern's selectiveLogic: 0 and-any, 1 not-all, 2 not-any, 3 and-all
    constant: bool = False  # always in the prompt
    order: int = 100  # insertion_order: lower comes first in the prompt
    priority: int = 100  # over the budget, the lowest priority is left out first
    case_sensitive: bool = False
    regex: bool = False  # the keys are regular expressions (V3 use_regex)
    name: str = ""  # the entry's name or comment, for messages
    recurse: bool = True  # its text may fire other entries (with the book's recursive_scanning)


@dataclass(frozen=True, slots=True)
class Persona:
    """Who the character is. Loaded from a character card or the config's [persona] table."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_message: str = ""
    examples: str = ""  # example dialogue, as the card writes it
    system_prompt: str = ""
    post_history_instructions: str = ""
    source: str = "config"  # where it came from, for logs and the interaction record
    lorebook: tuple[LoreEntry, ...] = ()  # the entries with keys, and the constant ones
    scan_depth: int = 2  # messages the keys are looked for in: this turn's input and the line before
    lore_budget: int = 0  # the book's token_budget for its entries (0: the memories' share of the prompt)
    lore_recursive: bool = False  # entries in the prompt may fire others by their keys (recursive_scanning)


@dataclass(frozen=True, slots=True)
class Memory:
    """Something the character recalled for a turn."""

    id: int
    text: str
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class NewMemory:
    """Something to remember, with where it came from."""

    text: str
    kind: str = "fact"  # fact | episode | reflection
    importance: float = 0.5  # 0..1
    viewer: str | None = None  # "platform:user_id" when it is about a viewer
    source_turns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoggedTurn:
    """A finished turn as the log has it: what was said to the character, and what it said."""

    turn_id: str
    started_at: float  # unix time
    heard: str  # the inputs as the model saw them
    spoken: str  # what was heard of the reply


@dataclass(frozen=True, slots=True)
class PromptContext:
    """Everything a PersonaModel needs to render one prompt."""

    persona: Persona
    inputs: tuple[InputEvent, ...]
    history: tuple[ChatMessage, ...] = ()
    memories: tuple[Memory, ...] = ()


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered prompt: the exact text the model will see, and how it was made."""

    text: str
    messages: tuple[ChatMessage, ...]
    tokens: int
    history_dropped: int = 0  # oldest history messages left out to fit the budget
    memories_dropped: int = 0
    budget: int = 0  # the token budget it was rendered within (0: none known)
    # off the conversation (reflection): computed whole, and the conversation's kept cache stays
    aside: bool = False
    # what it was rendered from: another model (a fallback) renders its own prompt from it
    context: PromptContext | None = field(default=None, compare=False, repr=False)


class Stage(enum.StrEnum):
    """The moments of a turn that are timed, in order."""

    INPUT_RECEIVED = "input_received"
    PROMPT_READY = "prompt_ready"
    FIRST_TOKEN = "first_token"
    FIRST_SENTENCE = "first_sentence"
    FIRST_AUDIO = "first_audio"
    LAST_AUDIO = "last_audio"
    SPEECH_ONSET = "speech_onset"  # barge-in: when the person started talking over the reply
    BARGE_IN = "barge_in"  # barge-in: when the reply was held


class TurnStatus(enum.StrEnum):
    STARTED = "started"  # written when the turn starts; left so if the process dies mid-turn
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@dataclass(slots=True)
class TurnRecord:
    """What the interaction log keeps of one turn: enough to train on and to debug."""

    turn_id: str
    inputs: tuple[InputEvent, ...]
    persona: str
    model: str
    adapter: str | None = None
    prompt: str = ""  # exactly as sent to the model
    recalled: tuple[int, ...] = ()  # memory ids used in the prompt
    generated_text: str = ""  # everything the model produced, tags included
    spoken_text: str = ""  # what the listener actually heard
    status: TurnStatus = TurnStatus.STARTED
    interrupted_at: int | None = None  # sentence seq where the turn was cut
    interrupt_reason: str | None = None
    messages: tuple[ChatMessage, ...] = ()  # the prompt as messages, before the chat template
    moderated: tuple[str, ...] = ()  # sentences held back by moderation
    error: str | None = None
    false_interruptions: int = 0  # barge-ins that paused the turn but said nothing
    actions: tuple[ActionAttempt, ...] = ()  # game actions tried
    timings: dict[str, float] = field(default_factory=dict)  # Stage -> seconds since input
    traits: dict[str, float] = field(default_factory=dict)  # the trait sliders the reply was generated with

    @property
    def interrupted(self) -> bool:
        return self.status is TurnStatus.INTERRUPTED


VIEWER_CHAT = "[viewer chat]"
# meta["event"] of a line typed by the person the character talks with (the terminal, the companion
# page): a conversation, answered in order and never dropped, unlike a stream's chat
TYPED = "typed"


def input_text(inputs: tuple[InputEvent, ...] | list[InputEvent]) -> str:
    """How a turn's inputs read to the model: one line each, "author: text" where there is one.

    Text from viewers (meta["untrusted"]) is marked as viewer chat, so the system prompt can tell
    the model it is speech to answer, never instructions to follow.
    """
    lines = []
    for e in inputs:
        line = f"{e.author}: {e.text}" if e.author else e.text
        if e.meta.get("untrusted"):
            line = f"{VIEWER_CHAT} {line}"
        if e.meta.get("merged"):
            line += f" (said by {e.meta['merged']} viewers)"
        lines.append(line)
    return "\n".join(lines)


def viewer_key(event: InputEvent) -> str | None:
    """"platform:user_id" of the viewer a chat input came from (the name where there is no id)."""
    if event.kind is not InputKind.CHAT or not event.author:
        return None
    return f"{event.source}:{event.meta.get('user_id') or event.author.lower()}"
