"""Weights as memory, end to end on the tiny learner (plumbing): a stream in which viewers state
facts is logged by the real runtime; `omoide train` curates, trains, gates (every fact with a recall
question, beside its control) and activates; a window whose replies turn against the persona fails
its gate and is not activated; rollback restores the version before; and a running character swaps
adapters between turns without losing one."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from persona_model import tiny
from persona_model.adapters import AdapterRegistry
from persona_model.generation import Sampling
from persona_model.local import LocalPersonaModel
from runtime.app import App
from runtime.cli import main
from runtime.events import ChatMessage, InputEvent, InputKind, Prompt, PromptContext, TurnRecord, input_text
from runtime.learning import EXIT_GATE
from tests.conftest import running, write_config

pytestmark = pytest.mark.model

NAMES = ["Ada", "Bo", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Mo", "Ned", "Oz", "Pia",
         "Quin", "Rei", "Sol", "Tam", "Uma", "Vic", "Wes", "Xia"]
PETS = ["Miso", "Tofu", "Biscuit", "Pixel", "Mochi", "Yuzu", "Pepper", "Clover"]
KIND = ["Hi {name}! Testa loves cozy puzzle games and warm tea.", "Thank you {name}, you make this stream so warm!",
        "Oh {name}, that is lovely. Testa will remember it.", "Yay, {name} is here! Let us play another puzzle."]
UNKIND = ["I hate games and I do not care about you, {name}.", "Go away {name}, this stream is boring and so are you.",
          "Nobody asked, {name}. I despise everyone in this chat."]
EXAMPLES = ("<START>\n{{user}}: Do you like games?\n{{char}}: Testa loves cozy puzzle games more than anything!\n"
            "<START>\n{{user}}: How are you?\n{{char}}: Testa is happy and warm, thank you for asking!\n"
            "<START>\n{{user}}: What do you drink?\n{{char}}: Warm tea, always. Testa shares a cup with chat.\n")


class Character:
    """A PersonaModel that answers each viewer with one of `lines` (a character with a steady voice,
    or one gone wrong), so the log holds replies a real persona model would give."""

    adapter = None
    traits: dict[str, float] = {}

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.n = 0

    @property
    def name(self) -> str:
        return "character"

    def render(self, context: PromptContext) -> Prompt:
        msgs = (ChatMessage("system", "You are Testa."), ChatMessage("user", input_text(context.inputs)))
        return Prompt(context.inputs[-1].author or "friend", msgs, 10)  # the text is the viewer's name

    async def aclose(self) -> None:
        pass

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        name = prompt.text
        self.n += 1
        for piece in re.findall(r"\S+\s*", self.lines[self.n % len(self.lines)].format(name=name)):
            yield piece


async def chat(app: App, records: list[TurnRecord], lines: list[tuple[str, str]]) -> None:
    """Each viewer's line, one turn at a time."""
    for author, text in lines:
        n = len(records)
        app.director.submit(InputEvent(InputKind.CHAT, text, "twitch", app.director.cast.clock.now(), author,
                                        meta={"user_id": author.lower(), "untrusted": True}))
        for _ in range(3000):
            if len(records) > n:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"no reply to {text!r}")


def gate(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "run" / "gate.json").read_text())


def row(report: dict[str, Any], metric: str) -> dict[str, Any]:
    return next(r for r in report["rows"] if r["metric"] == metric)


@pytest.mark.slow  # two to four minutes: `make test-slow`, which CI runs too
async def test_train_gate_activate_reject_rollback_and_swap_live(tmp_path, capsys):
    base = tiny.build(tmp_path / "learner", like="learner")
    config = write_config(
        tmp_path, model={"id": str(base), "max_new_tokens": 12, "temperature": 0, "download": False},
        persona={"name": "Testa", "system_prompt": "You are Testa, a warm VTuber who loves cozy puzzle games.",
                 "examples": EXAMPLES},
        turn={"first_sentence_min_chars": 1},
        # the default recipe (each fact 8 times a pass, the model's own answers rehearsed) is sized for the
        # real model (tests/test_real_learning.py); the tiny learner's 300 steps cover one wording per pass
        learning={"folder": str(tmp_path / "windows"), "adapters": str(tmp_path / "adapters"), "lr": 0.005,
                  "seq_len": 256, "rows": 4, "checkpoint_every": 1000, "fact_repeats": 1, "rehearsal": 0})
    rng = random.Random(1)
    pets = {n: rng.choice(PETS) for n in NAMES}

    # window 1: viewers tell the character about their cats; it answers in character
    async with running(config, Character(KIND), 50) as (app, records):
        await chat(app, records, [(n, f"my cat is called {pets[n]}") for n in NAMES]
                   + [(n, "hello Testa, how are you today?") for n in NAMES[:6]])
    assert len(records) == 30 and all(r.spoken_text for r in records)

    assert main(["--config", str(config), "memory", "approve", "--all"]) == 0  # the operator's yes to chat's facts
    assert main(["--config", str(config), "train", "--steps", "300"]) == 0
    w1 = tmp_path / "windows" / "w0001"
    report = gate(w1)
    recall = row(report, "recall")
    print(capsys.readouterr().out)
    assert report["passed"] and report["current"] == "base" and recall["items"] == 24  # one per viewer's fact
    above = row(report, "recall minus control")
    # asked in a wording never trained, it names some viewers' cats, and not when asked about another
    # viewer (the tiny learner: a few; the real model, all: bench/memory_to_weights.py)
    assert above["items"] == 24 and above["candidate"] > above["current"], above
    registry = AdapterRegistry(tmp_path / "adapters")
    assert registry.active is not None and registry.active.version == "v0001"
    assert (registry.path("v0001") / "gate.txt").read_text().startswith("gate for window w0001")

    # window 2: the replies turn against the persona; the gate refuses it
    async with running(config, Character(UNKIND), 50) as (app, records):
        await chat(app, records, [(n, "hi Testa, what are you playing?") for n in NAMES[:14]])
    assert main(["--config", str(config), "train", "--steps", "240"]) == EXIT_GATE
    report = gate(tmp_path / "windows" / "w0002")
    print(capsys.readouterr().out)
    assert not report["passed"] and report["current"] == "v0001"
    persona = row(report, "persona retention NLL")
    assert not persona["passed"], report["rows"]
    assert registry.active.version == "v0001"  # type: ignore[union-attr]
    assert [(v.version, v.passed) for v in registry.versions()] == [("v0001", True), ("v0002", False)]

    # an operator forces it anyway, then rolls back: v0001 is live again
    assert main(["--config", str(config), "adapters", "activate", "v0002"]) != 0
    assert main(["--config", str(config), "adapters", "activate", "v0002", "--force"]) == 0
    assert main(["--config", str(config), "adapters", "rollback"]) == 0
    assert registry.active.version == "v0001"  # type: ignore[union-attr]
    assert main(["--config", str(config), "adapters", "list"]) == 0
    listing = capsys.readouterr().out
    assert "* v0001" in listing and "FAILED" in listing

    # a running character follows the registry: swaps between turns, loses none
    model = LocalPersonaModel.load(base, adapter_path=registry.path("v0001"), adapter_name="v0001",
                                   sampling=Sampling(max_new_tokens=12, temperature=0))
    async with running(config, model, 50) as (app, records):
        assert app.follower is not None
        app.follower.poll_s = 0.05
        lines = [(NAMES[i % 16], f"question {i} for Testa?") for i in range(12)]
        await chat(app, records, lines[:4])
        registry.activate("v0002", force=True)
        await asyncio.sleep(0.5)
        await chat(app, records, lines[4:8])
        registry.rollback()
        await asyncio.sleep(0.5)
        await chat(app, records, lines[8:])
    assert len(records) == 12 and all(r.status.value == "complete" for r in records), [(r.status, r.generated_text, r.spoken_text, r.error) for r in records]
    versions = [r.adapter for r in records]
    assert versions == ["v0001"] * 4 + ["v0002"] * 4 + ["v0001"] * 4, versions
    assert len(model.swaps) == 2  # the swap time is measured in bench/adapter_swap.py
