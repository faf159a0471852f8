"""Chat in the terminal: typed lines in (`ConsoleChatSource`), the reply printed as it is spoken
(`ConsoleSubtitles`).

Lines starting with `/` are commands: `/interrupt` stops the reply in flight, `/quit` exits,
`/mute` and `/unmute` the microphone, `/talk` and `/over` press and release push-to-talk, `/help`
lists them. Typed lines are a conversation, not a stream's chat: each one is answered, in order
(meta["event"] = "typed": the inbox neither drops, merges nor reorders them).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import AsyncIterator, Mapping
from typing import TextIO

from runtime.events import TYPED, Control, InputEvent, InputKind, Priority, Sentence
from runtime.ports import Clock, FollowingSink, ThreadStream

COMMANDS = {"/interrupt": Control.INTERRUPT, "/stop": Control.INTERRUPT, "/quit": Control.STOP,
            "/exit": Control.STOP, "/mute": Control.MUTE, "/unmute": Control.UNMUTE,
            "/talk": Control.TALK_START, "/over": Control.TALK_STOP}
HELP = """commands:
  /interrupt   cut the reply she is saying (also /stop)
  /quit        leave (also /exit, or Ctrl-D)
  /mute        stop the microphone listening; /unmute
  /talk        with push-to-talk: start talking; /over when done
  /help        this list
anything else is said to her, and every line is answered in order
"""
MAX_LINE = 2000


class ConsoleChatSource:
    """Implements the Source port on a text stream (stdin by default).

    Reading happens on a daemon thread, so a blocked read never holds up the loop or the exit.
    """

    name = "console"

    def __init__(self, clock: Clock, author: str = "you", stream: TextIO | None = None,
                 out: TextIO | None = None, character: str = "") -> None:
        self.clock = clock
        self.author = author
        self.stream = stream if stream is not None else sys.stdin
        self.out = out if out is not None else sys.stdout
        self.character = character
        self._lines: ThreadStream[str] | None = None
        self._closed = False

    def _start(self) -> ThreadStream[str]:
        lines: ThreadStream[str] = ThreadStream()

        def read() -> None:
            try:
                for line in self.stream:
                    if lines.stop.is_set():
                        break
                    lines.put(line)
            except (OSError, ValueError):
                pass  # the stream was closed
            lines.end()

        threading.Thread(target=read, name="console-read", daemon=True).start()
        return lines

    def _say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def __aiter__(self) -> AsyncIterator[InputEvent]:  # type: ignore[override]
        if self._lines is None:
            if _is_terminal(self.stream):
                self._say(f"Talking with {self.character or 'the character'}: type a line and press Enter."
                          " /help lists the commands; /quit or Ctrl-D leaves.\n")
            self._lines = self._start()
        async for line in self._lines:
            if self._closed:
                break
            text = line.strip()
            if not text:
                continue
            word = text.split()[0].lower()
            command = COMMANDS.get(text.lower())
            if command is not None:
                yield InputEvent(InputKind.CONTROL, str(command), self.name, self.clock.now(),
                                 self.author, Priority.CRITICAL)
            elif word == "/help":
                self._say(HELP)
            elif word.startswith("/") and word[1:].isalpha():
                self._say(f"unknown command {word} (/help lists them)\n")
            else:
                yield InputEvent(InputKind.CHAT, text[:MAX_LINE], self.name, self.clock.now(),
                                 self.author, Priority.NORMAL, meta={"event": TYPED})

    async def aclose(self) -> None:
        self._closed = True
        if self._lines is not None:
            self._lines.end()  # wakes the reader; the thread's read of stdin is left to the exit


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


class ConsoleSubtitles(FollowingSink):
    """Implements the OutputSink port (non-pacing): prints each sentence as it starts to be heard."""

    def __init__(self, character: str, out: TextIO | None = None) -> None:
        self.character = character
        self.out = out if out is not None else sys.stdout
        self._started = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        self._started = False

    async def sentence(self, sentence: Sentence) -> None:
        if not sentence.text:
            return
        self._write(("" if self._started else f"{self.character}: ") + sentence.text + " ")
        self._started = True

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        if self._started or interrupted:
            self._write(("[interrupted]" if interrupted else "").rstrip() + "\n")
