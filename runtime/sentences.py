"""Cut a stream of generated text into speakable sentences, the first one early.

Expression tags such as `[happy]` are taken out of the spoken text and attached to the sentence
they were found in, so the avatar can show them while that sentence is heard. Given the set of
expressions the character has, any other bracketed word is a template's placeholder ("my name is
[name]", as small models write): a sentence holding one is not said. A speaker's label opening the
reply ("Komorebi: ...") is dropped.
"""

from __future__ import annotations

import re
import zlib

from runtime.events import Sentence

TAG = re.compile(r"\[([A-Za-z][A-Za-z _-]{0,30})\]")
# a sentence ends at . ! ? or … (and any closing quotes/brackets), once whitespace follows
END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n+")
CLAUSE = re.compile(r"[,;:—–](?=\s)")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st sr jr vs etc e.g i.e prof mt no fig approx ca".split()
)
SPEAKABLE = re.compile(r"\w")
_BEFORE_PUNCTUATION = re.compile(r"\s+([.,!?…;:])")
# expressions a character has unless its card names others (runtime/app.py adds the card's and VTube Studio's)
EXPRESSIONS = frozenset({"happy", "sad", "surprised", "thinking", "angry", "neutral", "excited", "laughing", "laugh",
                         "smile", "smiling", "blush", "blushing", "shy", "confused", "scared", "cry", "crying",
                         "wink", "love", "sleepy", "smug", "pout", "giggle", "nervous", "annoyed", "proud"})
# a speaker's label opening a reply ("Komorebi:", "Pixel Fox:", "tea_time:"): small models write one,
# copying the chat's "name: text" lines; it is not speech. Words that are capitalised or look like a
# username, so "Fun fact:" or "here's the thing:" stay.
_NAME = r"(?:[A-Z][\w'-]*|\w*[_\d]\w*)"
LABEL = re.compile(rf"^{_NAME}(?: {_NAME}){{0,2}}:(?=\s|$)")


class SentenceCutter:
    """Feed text pieces in, get finished sentences out.

    `first_min_chars`: once the first sentence has this many characters and has passed a clause
    boundary (a comma, a colon, a dash), it is cut there so speech can start sooner.
    `max_chars`: a run without any boundary is cut at the last space before this length.
    `ended` counts the sentences that came out whole (cut at their end, not at a clause or a
    length limit): what a reply's sentence cap counts.
    """

    def __init__(self, turn_id: str, first_min_chars: int = 30, max_chars: int = 220,
                 expressions: frozenset[str] | None = None) -> None:
        self.turn_id = turn_id
        self.expressions = expressions  # None: every bracketed word is an expression tag
        self.placeholders: list[str] = []  # sentences not said: they held a template's placeholder
        self.first_min_chars = first_min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._seq = 0
        self._pending_tags: list[str] = []
        self.ended = 0

    def feed(self, text: str) -> list[Sentence]:
        self._buf += text
        out: list[Sentence] = []
        while (found := self._find_cut()) is not None:
            cut, whole = found
            piece, self._buf = self._buf[:cut], self._buf[cut:]
            sentence = self._make(piece)
            if sentence is not None:
                out.append(sentence)
                self.ended += whole and bool(sentence.text)
        return out

    def flush(self) -> list[Sentence]:
        """The rest of the text, when the stream has ended."""
        piece, self._buf = self._buf, ""
        sentence = self._make(piece, last=True)
        return [sentence] if sentence is not None else []

    def _find_cut(self) -> tuple[int, bool] | None:
        """Where to cut, and whether what is cut off is a whole sentence."""
        buf = self._buf
        limit = _open_tag_at(buf)  # never cut inside a tag that has not closed yet
        for m in END.finditer(buf, 0, limit):
            if m.group().startswith("\n") or not _is_abbreviation(buf, m.start()):
                return m.end(), True
        if self._seq == 0 and len(buf) >= self.first_min_chars:
            for m in CLAUSE.finditer(buf, self.first_min_chars // 2, limit):
                return m.end(), False
        if len(buf) >= self.max_chars:
            space = buf.rfind(" ", 0, min(self.max_chars, limit))
            if space > 0:
                return space + 1, False
        return None

    def _make(self, piece: str, last: bool = False) -> Sentence | None:
        found = [tag_name(m) for m in TAG.finditer(piece)]
        if self.expressions is not None and any(t not in self.expressions for t in found):
            self.placeholders.append(" ".join(piece.split()))
            return None
        tags = self._pending_tags + found
        text = _BEFORE_PUNCTUATION.sub(r"\1", " ".join(TAG.sub(" ", piece).split()))  # "Bye [wave]!": "Bye!"
        if self._seq == 0:
            text = LABEL.sub("", text).lstrip()
        if last:
            text = TAG.sub("", text).strip()
        if not SPEAKABLE.search(text):
            # nothing to say: keep any tags for the next sentence (or the last one)
            self._pending_tags = tags
            if last and tags:
                return self._emit("", tags)
            return None
        self._pending_tags = []
        return self._emit(text, tags)

    def _emit(self, text: str, tags: list[str]) -> Sentence:
        sentence = Sentence(self.turn_id, self._seq, text, tuple(dict.fromkeys(tags)))
        self._seq += 1
        return sentence


def looping(text: str, min_chars: int = 80, ratio: float = 2.2) -> bool:
    """True when text goes round in circles ("I'm thinking about myself again, and I'm thinking
    about myself again, and ..."), as small models' runaway output does: it compresses more than
    `ratio` to one, as Whisper judges its own runaway transcripts (ordinary speech: 1.2-1.8).
    Short text never counts."""
    data = text.encode()
    return len(data) >= min_chars and len(data) / len(zlib.compress(data)) > ratio


def split_tags(text: str) -> tuple[str, tuple[str, ...]]:
    """Text without its expression tags, and the tags in order of first appearance."""
    tags = tuple(dict.fromkeys(tag_name(m) for m in TAG.finditer(text)))
    return " ".join(TAG.sub(" ", text).split()), tags


def tag_name(m: re.Match[str]) -> str:
    return "_".join(m.group(1).lower().split())


def _open_tag_at(buf: str) -> int:
    """Where an unclosed `[` starts (cuts must come before it), or the buffer's length."""
    start = buf.rfind("[")
    if start >= 0 and "]" not in buf[start:] and len(buf) - start <= 32:
        return start
    return len(buf)


def _is_abbreviation(buf: str, dot: int) -> bool:
    if buf[dot] != ".":
        return False
    word = buf[:dot].rsplit(None, 1)[-1].lower() if buf[:dot].strip() else ""
    word = word.lstrip("(\"'“")
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())
