"""Curation: the dataset for one update window, from the exported interaction log and memories.

Reads JSONL by path (`memory.export`: turns and memories), never the database. Writes, to the
window's folder:

- `train.jsonl`: chat examples `{"messages": [...], "kind", "source_turns"}`; only the last
  assistant message is a training target (viewers' text is context, never a target);
- `heldout_facts.jsonl`: closed-book questions for the recall gate, never trained on: the fact's
  fourth wording, answered by the bare value ("Miso", a form training never uses: it always answers
  in a sentence), with distractors that differ only in the value (other facts' values on the same
  subject; other subjects' values, or stand-ins, where it has none), and a control question (the
  same wording about someone else);
- `heldout_replies.jsonl`: in-character replies kept out of training, for the persona gate;
- `manifest.json`: the window, counts, the filters applied and a hash of each file.

What goes in: replies that were heard in full (interrupted ones contribute what was heard, or
nothing, by `interrupted`), with an operator's correction in place of the reply and replies marked
bad left out; every memory that is a fact, by one rule: a viewer's statement about themselves, a
fact a reflection wrote down, a memory the operator added, a lorebook entry, each sentence of it
with a recognisable shape ("Ada's cat is called Miso", "Bo plays the cello"), as questions in
several wordings answered in the character's voice (the last wording is held out), each example
with its source memory id. Facts that came from chat (a viewer's, a reflection's) only with the
operator's yes (`consent`; personal data never), at most `facts_per_viewer` of one viewer's; the
operator's and the card's need none. Then a replay share from earlier windows and the persona's
own example dialogue, against forgetting.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from persona_model.train.jsonl import read_jsonl

# questions about a fact, by what it is about: the last of each list is held out for the gate
_NOUN_QUESTIONS = (
    "What did {name} tell you about their {subject}?",
    "Do you remember anything about {name}'s {subject}?",
    "{name} mentioned their {subject} once. What was it?",
    "What do you know about the {subject} of {name}?",
)
_VERB_QUESTIONS = {
    "from": ("Where is {name} from?", "Do you know where {name} comes from?",
             "What did {name} say about where they are from?", "Which place does {name} come from?"),
    "live": ("Where does {name} live?", "Do you remember where {name} lives?",
             "What did {name} say about where they live?", "Which place is {name}'s home?"),
    "work": ("What does {name} do for work?", "Do you remember {name}'s work?",
             "What did {name} say about their job?", "How does {name} earn a living?"),
}
# questions about a memory that is not a viewer's own statement, by its topic ("Ada's cat")
_TOPIC_QUESTIONS = ("What do you know about {name}?", "Tell me about {name}.",
                    "What can you tell me about {name}?", "What do you remember about {name}?")
_GENERIC_QUESTIONS = ("What did {name} tell you about themselves?", "Do you remember something {name} said?",
                      "What do you know about {name}?", "Tell me one thing {name} told you.")
_VOICE = ("Oh, I remember! {answer}", "{answer} I never forget a friend!", "Hmm, yes: {answer}",
          "Of course! {answer}")
# the value a fact's question asks for, by the shapes memory/viewers.py recognises
_VALUE = (re.compile(r"^my\s+.+?\s+(?:is|are|was|were|'s)\s+(?:called\s+|named\s+)?(?P<value>.+)$", re.I),
          re.compile(r"^i(?:'m| am)\s+(?:from|an?)\s+(?P<value>.+)$", re.I),
          re.compile(r"^i\s+(?:live|work|love|like|hate|play|have)\s+(?:(?:in|at|near|on|as|for|with)\s+)?(?P<value>.+)$",
                     re.I))
# distractors where a window has one fact only (a companion's first evening): values of the same
# case as the answer, none of them the answer
_STAND_INS = {True: ("Luna", "Oliver", "Kyoto", "Bella", "Milo", "Lisbon"),
              False: ("pizza", "blue", "a teacher", "chess", "tea", "rainy days")}
_STATEMENT_VOICE = ("{answer}", "Hmm, let me think. {answer}", "Oh, I know this one! {answer}",
                    "Of course! {answer}")
# a third-person statement (a reflection's, the operator's, the card's): the topic, and the value a
# question about it asks for; a topic that is a pronoun ("She loves storms") is nobody we can name
_STATEMENT = re.compile(
    r"^(?P<topic>(?!(?:he|she|it|they|this|that|there|we|i|you)\b)[^,;:]{2,60}?)\s+"
    r"(?P<verb>is|are|was|were|has|have|had|likes|loves|hates|lives|works|plays|comes|owns|collects|drinks|eats)"
    r"\s+(?:(?:called|named|in|at|near|on|as|for|with|from)\s+)?(?:(?:a|an|the)\s+)?(?P<value>.+)$", re.I)
_VALUE_END = re.compile(r",|;|\s+(?:and|but|because|since|who|which|when|so)\s", re.I)
_VAGUE = {"someone", "somebody", "something", "one", "anyone", "everyone", "nothing", "here", "there", "it",
          "this", "that", "very", "really", "so", "not"}  # no value a question could check
MAX_VALUE_WORDS = 5  # a longer "value" is a description no one answer names: not a checkable fact
MAX_SENTENCES = 8  # of one memory (a long lorebook entry): the first ones
_OTHER_NAME = "Sam"  # the control question's subject where a window has one viewer
_SAID = re.compile(r"^(?P<name>[^:]{1,60}) said: (?P<statement>.+)$")
_PRONOUNS = [(re.compile(rf"\b{a}\b", re.I), b) for a, b in (
    ("i'm", "they're"), ("i am", "they are"), ("i've", "they've"), ("i was", "they were"),
    ("my", "their"), ("mine", "theirs"), ("me", "them"), ("myself", "themselves"), ("i", "they"))]


class CurationError(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CurationSettings:
    interrupted: Literal["spoken", "exclude"] = "spoken"  # what was heard of it, or nothing
    replay_share: float = 0.2  # replay examples per new example, from earlier windows
    persona_examples: bool = True  # the card's example dialogue, every window
    heldout_replies: float = 0.1  # share of replies kept out of training for the persona gate
    facts_per_viewer: int = 10  # at most this many of one viewer's facts per window (a flood is not learned)
    fact_repeats: int = 8  # each fact's trained wordings this many times, in other voices (facts need more passes than replies)
    seed: int = 0


@dataclass
class Window:
    """What one curation produced."""

    folder: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    heldout_facts: list[dict[str, Any]] = field(default_factory=list)
    heldout_replies: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def third_person(statement: str) -> str:
    """ "my cat is called Miso" -> "their cat is called Miso" (what the character says back)."""
    out = statement
    for pattern, repl in _PRONOUNS:
        out = pattern.sub(repl, out)
    return out


@dataclass(frozen=True, slots=True)
class FactQA:
    """A viewer's fact as questions and answers: `questions` (the last is held out), `answer` (the
    sentence training teaches), `value` (what the question asks for: the gate's answer)."""

    name: str
    subject: str
    questions: list[str]
    answer: str
    value: str
    voices: Sequence[str] = _VOICE  # the ways the character says the answer, one per trained wording

    def ask(self, question: str, about: str) -> str:
        """The same question about someone else (the control)."""
        return re.sub(rf"\b{re.escape(self.name)}\b", about, question)


def fact_value(statement: str) -> str:
    """What a question about the fact asks for: "my cat is called Miso" -> "Miso", "I live in
    Osaka" -> "Osaka"; the statement itself (in the third person) where it has no such shape."""
    text = statement.strip().rstrip(".!")
    for shape in _VALUE:
        if (m := shape.match(text)) and m.group("value").strip():
            return m.group("value").strip()
    return third_person(text)


def fact_items(memory: dict[str, Any], persona_name: str = "") -> list[FactQA]:
    """The questions and answers a memory that is a fact becomes: a viewer's statement about
    themselves, or each sentence of any other fact memory that has a statement's shape (see
    `statement_items`). Nothing for other kinds (episodes, thoughts)."""
    if memory.get("kind") != "fact":
        return []
    if (said := _viewer_fact(memory)) is not None:
        return [said]
    return statement_items(str(memory.get("text", "")), persona_name)


def statement_items(text: str, persona_name: str = "") -> list[FactQA]:
    """"Ada's cat is called Miso. Bo plays the cello." -> one FactQA per sentence with a topic
    and a short value ("Ada's cat": "Miso"; "Bo": "cello"). About the character herself ("Komorebi's
    favourite tea is genmaicha"), the questions say "your" and the answer "my"."""
    items = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split()))[:MAX_SENTENCES]:
        sentence = sentence.strip().rstrip(".!")
        m = _STATEMENT.match(sentence)
        if not m:
            continue
        value = _VALUE_END.split(m.group("value"), maxsplit=1)[0].strip().rstrip(".!?")
        topic = re.sub(r"^(?:The|A|An)\b", lambda a: a.group(0).lower(), m.group("topic").strip())
        if not value or len(value.split()) > MAX_VALUE_WORDS or value.split()[0].lower() in _VAGUE or "?" in sentence:
            continue
        answer = sentence
        if persona_name:
            own = re.compile(rf"^{re.escape(persona_name)}(?:'s|’s)\s+", re.I)
            if own.match(topic):
                topic, answer = own.sub("your ", topic), own.sub("My ", sentence)
            elif topic.lower() == persona_name.lower():
                topic = "yourself"
        items.append(FactQA(topic, topic.split()[-1].lower(), [q.format(name=topic) for q in _TOPIC_QUESTIONS],
                            answer[:1].upper() + answer[1:] + ".", value, voices=_STATEMENT_VOICE))
    return items


def _viewer_fact(memory: dict[str, Any]) -> FactQA | None:
    """A fact a viewer stated about themselves ("Ada said: my cat is called Miso"), or None."""
    m = _SAID.match(memory.get("text", ""))
    if not m:
        return None
    name = memory.get("viewer_name") or m.group("name")
    subject = (memory.get("subject") or "").strip()
    statement = third_person(m.group("statement").strip().rstrip("."))
    if subject in _VERB_QUESTIONS:
        questions = _VERB_QUESTIONS[subject]
    elif subject.replace(" ", "").isalpha() and subject not in ("a", "an", "love", "like", "hate", "play", "have"):
        questions = _NOUN_QUESTIONS
    else:
        questions = _GENERIC_QUESTIONS
    return FactQA(name, subject, [q.format(name=name, subject=subject) for q in questions],
                  f"{name} told me {statement}.", fact_value(m.group("statement")))


def persona_pairs(examples: str, name: str) -> list[tuple[str, str]]:
    """(user line, character line) pairs from a card's example dialogue."""
    pairs, user = [], None
    for raw in examples.replace("<START>", "\n").splitlines():
        line = raw.strip()
        speaker, _, text = line.partition(":")
        speaker = speaker.strip().strip("{}").lower()
        if not text.strip():
            continue
        if speaker in ("user", "you"):
            user = text.strip()
        elif speaker in ("char", name.lower()) and user:
            pairs.append((user, text.strip()))
            user = None
    return pairs


def _read(path: Path | None) -> list[dict[str, Any]]:
    return read_jsonl(path) if path is not None and path.exists() else []


def curate(folder: Path, turns: Path, memories: Path, *, system: str, persona_name: str,  # noqa: C901 (the curation recipe read top to bottom (docs/learning.md))
           persona_examples: str = "", earlier: Sequence[Path] = (),
           settings: CurationSettings = CurationSettings(), window: dict[str, Any] | None = None,
           forgotten: tuple[Collection[str], Collection[int]] = ((), ())) -> Window:
    """Build one window's dataset in `folder` from exported turns and memories. `system` is the
    persona's system prompt, used for the examples that are not replayed turns. `forgotten`: the
    turns and memory ids of viewers who asked to be forgotten, never replayed from earlier windows."""
    rng = random.Random(settings.seed)
    out = Window(folder)
    counts = out.counts
    replies: list[dict[str, Any]] = []
    for t in _read(turns):
        meta, msgs = t.get("metadata", {}), t.get("messages", [])
        counts["turns"] = counts.get("turns", 0) + 1
        if len(msgs) < 2 or msgs[-1].get("role") != "assistant":
            raise CurationError(f"{turns}: turn {meta.get('turn_id')} does not end with the character's reply")
        review = meta.get("review")
        if review == "bad":
            counts["excluded_bad"] = counts.get("excluded_bad", 0) + 1
            continue
        if review == "corrected" and meta.get("corrected_text"):
            msgs = [*msgs[:-1], {"role": "assistant", "content": meta["corrected_text"]}]
            counts["corrected"] = counts.get("corrected", 0) + 1
        elif meta.get("interrupted") and settings.interrupted == "exclude":
            counts["excluded_interrupted"] = counts.get("excluded_interrupted", 0) + 1
            continue
        replies.append({"messages": msgs, "kind": "reply", "source_turns": [meta.get("turn_id")]})
    rng.shuffle(replies)
    held = int(len(replies) * settings.heldout_replies) if len(replies) >= 10 else 0
    out.heldout_replies, new = replies[:held], replies[held:]

    facts: list[tuple[dict[str, Any], FactQA]] = []
    per_viewer: dict[str, int] = {}
    for m in _read(memories):
        if not (items := fact_items(m, persona_name)):
            if m.get("kind") == "fact":
                counts["facts_unshaped"] = counts.get("facts_unshaped", 0) + 1
            continue
        # what came from chat (a viewer's statement, a reflection on the stream) is learned only
        # with the operator's yes; the operator's own memories and the card's lore have no consent
        # to wait for (None)
        consent = m.get("consent")
        if consent is not None and consent != "approved":
            counts[f"facts_{consent}"] = counts.get(f"facts_{consent}", 0) + 1
            continue
        if who := str(m.get("viewer") or m.get("viewer_name") or ""):
            per_viewer[who] = per_viewer.get(who, 0) + 1
            if per_viewer[who] > settings.facts_per_viewer:
                counts["facts_over_cap"] = counts.get("facts_over_cap", 0) + 1
                continue
        source_kind = "viewer" if _SAID.match(m.get("text", "")) else str(m.get("source") or "operator")
        counts[f"facts_from_{_source_name(source_kind)}"] = counts.get(f"facts_from_{_source_name(source_kind)}", 0) + 1
        facts.extend((m, qa) for qa in items)
    for m, qa in facts:
        source = list(m.get("source_turns") or [])
        voices = rng.sample(list(qa.voices), len(qa.voices))  # each wording answered a different way
        for r in range(settings.fact_repeats):  # and again in another voice
            for i, q in enumerate(qa.questions[:-1]):
                voice = voices[(i + r) % len(voices)]
                new.append({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q},
                                         {"role": "assistant", "content": voice.format(answer=qa.answer)}],
                            "kind": "fact_qa", "source_turns": source, "memory_id": m.get("id")})
        out.heldout_facts.append(_recall_item(m, qa, [f for _, f in facts], system, rng))
    if settings.persona_examples:
        for user, reply in persona_pairs(persona_examples, persona_name):
            new.append({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                                     {"role": "assistant", "content": reply}], "kind": "persona", "source_turns": []})
    gone_turns, gone_memories = set(forgotten[0]), set(forgotten[1])
    pool = [ex for path in earlier for ex in _read(path) if ex.get("kind") != "replay"
            and not gone_turns & set(ex.get("source_turns") or []) and ex.get("memory_id") not in gone_memories]
    replay = rng.sample(pool, min(len(pool), round(settings.replay_share * len(new))))
    out.train = new + [{**ex, "kind": "replay", "replayed_kind": ex.get("kind")} for ex in replay]
    rng.shuffle(out.train)
    for ex in out.train:
        counts[ex["kind"]] = counts.get(ex["kind"], 0) + 1
    counts["heldout_facts"], counts["heldout_replies"] = len(out.heldout_facts), len(out.heldout_replies)
    _write(out, settings, window or {})
    return out


def _source_name(source: str) -> str:
    """Where a fact came from, for the manifest's counts: viewer, reflection, operator or card."""
    return source if source in ("viewer", "reflection", "operator") else "card"


def _recall_item(memory: dict[str, Any], qa: FactQA, facts: Sequence[FactQA], system: str,
                 rng: random.Random) -> dict[str, Any]:
    """The gate's question about one fact: the held-out wording, the bare value against values that
    differ from it only in being another fact's, and the same question about someone else."""
    same = sorted({f.value for f in facts if f.subject == qa.subject} - {qa.value})
    pool = same or sorted({f.value for f in facts} - {qa.value})  # a subject said once: other subjects'
    if not pool:  # the window's only fact
        pool = [v for v in _STAND_INS[qa.value[:1].isupper()] if v.lower() != qa.value.lower()]
    distractors = rng.sample(pool, min(3, len(pool)))
    others = sorted({f.name for f in facts if f.value in distractors} - {qa.name}) \
        or sorted({f.name for f in facts} - {qa.name}) or [_OTHER_NAME]  # whose answer is a distractor, first
    return {"memory_id": memory.get("id"), "question": qa.questions[-1], "answer": qa.value,
            "distractors": distractors, "control_question": qa.ask(qa.questions[-1], rng.choice(others)),
            "system": system}


def _write(w: Window, settings: CurationSettings, window: dict[str, Any]) -> None:
    w.folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, rows in (("train.jsonl", w.train), ("heldout_facts.jsonl", w.heldout_facts),
                       ("heldout_replies.jsonl", w.heldout_replies)):
        data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
        (w.folder / name).write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    manifest = {"window": window, "counts": w.counts, "hashes": hashes,
                "filters": {"interrupted": settings.interrupted, "bad_replies": "excluded",
                            "corrections": "replace the reply", "targets": "the last assistant message only",
                            "replay_share": settings.replay_share, "persona_examples": settings.persona_examples,
                            "fact_repeats": settings.fact_repeats,
                            "heldout_replies": settings.heldout_replies, "seed": settings.seed}}
    (w.folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

