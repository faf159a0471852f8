"""Several characters on one stream ([[characters]], runtime/collab.py), and each character's own
home (runtime/characters.py): who answers, who hears what, what each remembers.

The characters are real (the director, the turns, a SQLite store each, the avatar channel over a
real socket); the model is scripted so that each reply says who gave it and what she was asked.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from runtime.cli import main
from runtime.config import ConfigError, load
from runtime.events import InputEvent, InputKind, Prompt
from tests.conftest import AvatarClient, running, write_config
from tests.fakes import ScriptedModel
from tests.harness import until
from tests.test_overlay import chromium, needs_chromium


class Speaking(ScriptedModel):
    """Says who she is and the last line she was asked, and keeps every prompt by character."""

    def __init__(self) -> None:
        super().__init__("")
        self.prompts: dict[str, list[str]] = {}
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        name = re.match(r"system: You are (\w+)\.", prompt.text).group(1)  # type: ignore[union-attr]
        self.prompts.setdefault(name, []).append(prompt.text)
        asked = prompt.messages[-1].content.split(": ", 1)[-1]
        for piece in re.findall(r"\S+\s*", f"{name} here, about {asked}"):
            await asyncio.sleep(0.001)
            yield piece


def duo_config(tmp_path: Path, banter: int = 0, **sections: Any) -> Path:
    path = write_config(tmp_path, collab={"banter": banter}, **sections)
    path.write_text(path.read_text() + "\n".join([
        '[[characters]]', 'name = "Komorebi"', 'greet = false',
        '[[characters]]', 'name = "Kage"', 'greet = false', 'voice = { espeak = { pitch = 20 } }', ""]))
    return path


def say(app: Any, text: str, author: str = "ann") -> None:
    """A viewer's chat line, sent now."""
    app.director.submit(InputEvent(InputKind.CHAT, text, "twitch", app.director.cast.clock.now(), author,
                                   meta={"untrusted": True, "user_id": author}))


def speaker(record: Any) -> str:
    return record.spoken_text.split(" here")[0]


async def test_two_characters_take_turns_and_one_named_answers(tmp_path):
    model = Speaking()
    async with running(duo_config(tmp_path), model) as (app, records):
        for text in ("hello chat one", "hello chat two", "Kage, what do you think?", "kage! again", "and you?"):
            n = len(records)
            say(app, text)
            await until(lambda n=n: len(records) > n)
        # alternate: the one quiet the longest answers; a line naming one is hers, whoever's turn it was
        assert [speaker(r) for r in records] == ["Komorebi", "Kage", "Kage", "Kage", "Komorebi"]
        assert [len(model.prompts[n]) for n in ("Komorebi", "Kage")] == [2, 3]
    assert model.closed  # the model they share is closed once they stop
    # each has her own home and database; the first character's is not memory.database
    homes = {p.parent.name: p for p in (tmp_path / "characters").glob("*/omoide.db")}
    assert set(homes) == {"komorebi", "kage"} and not (tmp_path / "omoide.db").exists()


async def test_characters_hear_each_other_as_lines_never_as_notes(tmp_path):
    model = Speaking()
    async with running(duo_config(tmp_path), model) as (app, records):
        say(app, "first question")
        await until(lambda: len(records) == 1)
        say(app, "second question")
        await until(lambda: len(records) == 2)
    kage_prompt = model.prompts["Kage"][0]
    # Komorebi's reply is in Kage's conversation as Komorebi's line, in a user message
    assert "user: Komorebi: Komorebi here, about first question" in kage_prompt
    assert "system: Komorebi" not in kage_prompt


async def test_after_a_restart_each_has_the_conversation_as_she_heard_it(tmp_path):
    model = Speaking()
    path = duo_config(tmp_path, banter=1)
    async with running(path, model) as (app, records):
        for text in ("hello you two", "Kage, a secret: the key is under the mat", "what is for dinner?"):
            n = len(records)
            say(app, text)
            await until(lambda n=n: len(records) > n and not app.director.busy)
        before = {m.name: list(m.history) for m in app.director.troupe.members}
    # Komorebi heard Kage's replies to chat, which are in no turn of hers: they come back too
    assert any(m.content.startswith("Kage: Kage here") for m in before["Komorebi"])
    async with running(path, model) as (app, records):
        await until(lambda: all(m.history for m in app.director.troupe.members))  # read as she starts
        after = {m.name: list(m.history) for m in app.director.troupe.members}
    assert after == before
    assert not any("the key is under the mat" in m.content for m in after["Komorebi"])


async def test_a_secret_told_to_one_is_in_no_prompt_or_memory_of_the_other(tmp_path):
    model = Speaking()
    async with running(duo_config(tmp_path), model) as (app, records):
        say(app, "Komorebi, my cat is called Mochimaru")
        await until(lambda: len(records) == 1)
        for text in ("what is new?", "tell me a story", "Kage, what is my cat called?"):
            n = len(records)
            say(app, text)
            await until(lambda n=n: len(records) > n)
        assert [speaker(r) for r in records] == ["Komorebi", "Kage", "Komorebi", "Kage"]
        recalled = await app.director.troupe.member("Kage").cast.memory.recall("cat called", 5, "twitch:ann")
        mine = await app.director.troupe.member("Komorebi").cast.memory.recall("cat called", 5, "twitch:ann")
    assert not any("Mochimaru" in p for p in model.prompts["Kage"])
    assert not any("Mochimaru" in m.text for m in recalled)
    assert any("Mochimaru" in m.text for m in mine)  # she learned it: the fact is hers
    kage_db = sqlite3.connect(tmp_path / "characters" / "kage" / "omoide.db")
    assert not kage_db.execute("SELECT count(*) FROM inputs WHERE text LIKE '%Mochimaru%'").fetchone()[0]
    assert not kage_db.execute("SELECT count(*) FROM memories WHERE text LIKE '%Mochimaru%'").fetchone()[0]


async def test_banter_alternates_without_overlap_each_line_attributed(tmp_path):
    model = Speaking()
    async with running(duo_config(tmp_path, banter=20), model) as (app, records):
        async with AvatarClient(f"ws://127.0.0.1:{app.avatar.port}") as client:
            say(app, "start the show")
            await until(lambda: len(records) == 21)
            await client.wait_for(lambda m: m["type"] == "turn_end" and m["turn_id"] == records[-1].turn_id)
            names = [speaker(r) for r in records]
            assert names == ["Komorebi", "Kage"] * 10 + ["Komorebi"]
            # each banter line answers the other's last line, and the log says who said what
            assert records[1].inputs[0].author == "Komorebi" and records[1].inputs[0].text == records[0].spoken_text
            turns = [m for m in client.messages if m["type"] in ("turn_start", "turn_end")]
            # one turn at a time: every start is followed by its own end before the next start
            assert [m["type"] for m in turns] == ["turn_start", "turn_end"] * 21
            assert all(a["turn_id"] == b["turn_id"] for a, b in zip(turns[::2], turns[1::2], strict=True))
            assert [m["character"] for m in turns[::2]] == names
            by_turn = {m["turn_id"]: m["character"] for m in turns[::2]}
            said = [m for m in client.messages if m["type"] == "sentence"]
            assert all(m["character"] == by_turn[m["turn_id"]] for m in said)
            assert all(m["text"].startswith(m["character"]) for m in said if m["seq"] == 0)
        # chat comes back after the budget: the next line is answered, not the banter
        say(app, "back to chat")
        await until(lambda: len(records) >= 22)
        assert records[21].inputs[0].text == "back to chat"


async def test_a_cut_line_is_answered_as_heard_and_the_answer_made_ahead_leaves_no_trace(tmp_path):
    model = Speaking()
    async with running(duo_config(tmp_path, banter=2), model, speed=1.0) as (app, records):
        async with AvatarClient(f"ws://127.0.0.1:{app.avatar.port}") as client:
            say(app, "tell us a story. There is a forest. And a lake. And an old lighthouse keeper.")
            # while Komorebi says her reply, Kage's answer to all of it is made, held
            await until(lambda: app.director._early is not None)
            held = app.director._early.turn.turn_id  # type: ignore[union-attr]
            await until(lambda: "lake" in "".join(m.get("text", "") for m in client.messages))
            assert app.director.interrupt()  # the streamer cuts Komorebi off
            await until(lambda: len(records) >= 2)
            cut, answer = records[:2]
            assert cut.status == "interrupted" and cut.spoken_text and "lighthouse" not in cut.spoken_text
            # Kage answers what was heard, in a turn of her own made then, not the one made ahead
            assert speaker(answer) == "Kage" and answer.inputs[0].text == cut.spoken_text
            assert answer.turn_id != held and "lighthouse" not in answer.spoken_text
            await client.wait_for(lambda m: m["type"] == "turn_end" and m["turn_id"] == answer.turn_id)
            assert held not in {m.get("turn_id") for m in client.messages}
        assert held not in {r.turn_id for r in records}
    for name in ("kage", "komorebi"):
        db = sqlite3.connect(tmp_path / "characters" / name / "omoide.db")
        assert not db.execute("SELECT count(*) FROM turns WHERE id = ?", (held,)).fetchone()[0]


async def test_an_answer_made_ahead_that_fails_does_not_cut_the_one_speaking(tmp_path):
    class KageBreaks(Speaking):
        async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
            if "You are Kage." in prompt.text:
                raise RuntimeError("the model broke")
            async for piece in super().stream(prompt):
                yield piece

    # no fallback line: the failure ends her turn while Komorebi is still speaking
    async with running(duo_config(tmp_path, banter=1, turn={"fallback_line": ""}), KageBreaks(), speed=2.0) as (
            app, records):
        async with AvatarClient(f"ws://127.0.0.1:{app.avatar.port}") as client:
            say(app, "tell us a story. There is a forest. And a lake.")
            await until(lambda: len(records) == 2)
            said, failed = records
            # Komorebi was heard to the end; Kage's failed answer, made while she spoke, came after
            assert said.status == "complete" and said.spoken_text.endswith("And a lake.")
            assert failed.persona == "Kage" and failed.status == "failed"
            await client.wait_for(lambda m: m["type"] == "turn_end" and m["turn_id"] == failed.turn_id)
            turns = [(m["type"], m["turn_id"]) for m in client.messages if m["type"] in ("turn_start", "turn_end")]
            assert turns == [("turn_start", said.turn_id), ("turn_end", said.turn_id),
                             ("turn_start", failed.turn_id), ("turn_end", failed.turn_id)]


async def test_the_operator_ends_banter_and_chat_is_answered(tmp_path):
    model = Speaking()
    async with running(duo_config(tmp_path, banter=50), model, speed=1.0) as (app, records):
        say(app, "start the show")
        await until(lambda: len(records) >= 2)
        assert app.director.end_banter()
        say(app, "over to chat")
        await until(lambda: any(r.inputs[0].text == "over to chat" for r in records))
        await asyncio.sleep(0.3)
        assert len(records) <= 5 and records[-1].inputs[0].text == "over to chat"


def test_characters_config_errors_name_what_is_wrong(tmp_path):
    path = duo_config(tmp_path)
    from runtime.characters import cast_of
    cast = cast_of(load(path, env={}))
    assert [c.chosen for c in cast] == ["Komorebi", "Kage"]
    assert cast[1].tts.espeak.pitch == 20 and cast[0].tts.espeak.pitch == 50  # her voice over [tts]
    path.write_text(path.read_text().replace('name = "Kage"', 'name = "komorebi"'))
    with pytest.raises(ConfigError, match="'komorebi' is given twice"):
        cast_of(load(path, env={}))
    path.write_text(path.read_text().replace('name = "komorebi"', 'name = "Kage"').replace("pitch = 20", "pitch = 200"))
    with pytest.raises(ConfigError, match=r"characters 'Kage': voice.espeak.pitch = 200"):
        cast_of(load(path, env={}))


def test_commands_work_on_the_character_named(tmp_path, capsys):
    path = duo_config(tmp_path)
    assert main(["--config", str(path), "--character", "Kage", "memory", "add", "Kage likes thunderstorms"]) == 0
    assert main(["memory", "list", "--config", str(path), "--character", "kage"]) == 0
    assert "thunderstorms" in capsys.readouterr().out
    assert main(["memory", "add", "Komorebi likes sunlight", "--config", str(path)]) == 0  # the first's
    assert main(["memory", "list", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sunlight" in out and "thunderstorms" not in out
    # `omoide run` starts them all; with --character, her alone
    from argparse import Namespace

    from runtime.cli_common import config_from
    assert [e.name for e in config_from(Namespace(config=str(path)), everyone=True).characters] == ["Komorebi", "Kage"]
    alone = config_from(Namespace(config=str(path), character="Kage"), everyone=True)
    assert alone.chosen == "Kage" and not alone.characters
    assert main(["memory", "list", "--config", str(path), "--character", "Nobody"]) == 2
    assert "'Nobody' is not one of the characters (Komorebi, Kage)" in capsys.readouterr().err


async def test_a_new_card_does_not_inherit_the_last_characters_history(tmp_path):
    path = write_config(tmp_path, turn={"history_messages": 10})
    model = Speaking()
    async with running(path, model) as (app, records):
        say(app, "remember the blue door")
        await until(lambda: len(records) == 1)
    renamed = Path(str(path).replace("config.toml", "hana.toml"))
    await asyncio.to_thread(renamed.write_text, path.read_text().replace('"name" = "Testa"', '"name" = "Hana"'))
    async with running(renamed, model) as (app, records):
        assert not list(app.director.history)  # Hana starts her own conversation
        assert app.memory.path == tmp_path / "characters" / "hana" / "omoide.db"
    async with running(path, model) as (app, records):  # and Testa finds hers as she left it
        await until(lambda: "remember the blue door" in json.dumps([m.content for m in app.director.history]))
        assert app.memory.path == tmp_path / "omoide.db"


async def test_the_operator_picks_mutes_and_ends_banter_over_the_avatar_channel(tmp_path):
    import websockets

    model = Speaking()
    async with running(duo_config(tmp_path, banter=50), model) as (app, records):
        url = f"ws://127.0.0.1:{app.avatar.port}/?control={app.avatar.control_token}"
        async with websockets.connect(url) as ws:
            async def ask(**message: Any) -> dict[str, Any]:
                await ws.send(json.dumps({"type": "collab", "request_id": "r", **message}))
                while (answer := json.loads(await ws.recv()))["type"] not in ("collab_result", "error"):
                    pass
                return answer

            assert "'Nobody'" in (await ask(next="Nobody"))["message"]  # one line, naming who there is
            assert (await ask(next="Kage"))["next"] == "Kage"
            say(app, "who goes first?")
            await until(lambda: len(records) >= 2)
            assert speaker(records[0]) == "Kage"  # her turn although Komorebi had been quiet longer
            assert (await ask(end_banter=True, mute="Kage"))["muted"] == ["Kage"]
            n = len(records)
            say(app, "Kage, are you there?")  # muted: Komorebi answers in her place
            await until(lambda: any(r.inputs[0].text == "Kage, are you there?" for r in records[n:]))
            assert all(speaker(r) == "Komorebi" for r in records[n + 1:])


@needs_chromium
async def test_the_companion_page_shows_who_speaks_and_picks_mutes_and_ends_banter(tmp_path):
    model = Speaking()
    async with running(duo_config(tmp_path, banter=50), model, speed=2.0) as (app, records), \
            chromium({"width": 900, "height": 700}) as browser:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{app.avatar.port}/overlay?companion=1&control={app.avatar.control_token}")
        await until(lambda: page.evaluate("document.querySelectorAll('#collab .character').length === 2"))
        await page.click("#collab [data-name=Kage] .mute")
        await until(lambda: page.evaluate(
            "document.querySelector('#collab [data-name=Kage] .mute').getAttribute('aria-pressed') === 'true'"))
        say(app, "Kage, are you there?")  # she is muted: Komorebi answers, and with nobody to banter with, stops
        await until(lambda: len(records) == 1)
        assert speaker(records[0]) == "Komorebi"
        await page.click("#collab [data-name=Kage] .mute")  # unmuted
        await page.click("#collab [data-name=Kage] .next")
        await until(lambda: app.director.troupe.picked is not None and not app.director.troupe.member("Kage").muted)
        say(app, "Komorebi, start the show")  # named Komorebi, but the operator picked Kage
        await until(lambda: len(records) >= 3)  # Kage answers, then they banter
        assert [speaker(r) for r in records[1:3]] == ["Kage", "Komorebi"]
        await page.click("#end-banter")
        await until(lambda: app.director.troupe.banter_left == 0)
        await page.click("#collab [data-name=Kage] .mute")  # so that chat's answer opens no banter
        await until(lambda: app.director.troupe.member("Kage").muted)
        n = len(records)
        say(app, "back to chat")
        await until(lambda: any(r.inputs[0].text == "back to chat" for r in records[n:]))
        # each reply line on the page is named for the one who said it, and the header names who speaks
        await until(lambda: page.evaluate(f"document.querySelectorAll('.line.reply .who').length === {len(records)}"))
        shown = await page.evaluate("[...document.querySelectorAll('.line.reply .who')].map((e) => e.textContent)")
        assert shown == [speaker(r) for r in records]
        assert await page.text_content("#name") == speaker(records[-1])


@pytest.mark.slow  # about a minute: `make test-slow`, which CI runs too
async def test_one_character_s_training_changes_only_her_adapter(tmp_path):
    from persona_model import tiny
    from persona_model.adapters import AdapterRegistry
    from persona_model.generation import Sampling
    from persona_model.local import LocalPersonaModel
    from runtime.learning import EXIT_GATE
    from tests.test_weights_loop import KIND, NAMES, PETS, Character, chat

    base = tiny.build(tmp_path / "learner", like="learner")
    config = duo_config(tmp_path, model={"id": str(base), "max_new_tokens": 12, "temperature": 0, "download": False},
                        turn={"first_sentence_min_chars": 1},
                        learning={"lr": 0.005, "seq_len": 256, "rows": 4, "checkpoint_every": 1000, "fact_repeats": 1,
                                  "rehearsal": 0})
    # viewers tell Kage about their cats, privately; Komorebi is greeted too
    async with running(config, Character(KIND), 50) as (app, records):
        await chat(app, records, [(n, f"Kage, my cat is called {PETS[i % len(PETS)]}") for i, n in enumerate(NAMES)]
                   + [(n, "Komorebi, how are you?") for n in NAMES[:4]])
    assert [r.persona for r in records].count("Kage") == len(NAMES)
    homes = {name: tmp_path / "characters" / name for name in ("komorebi", "kage")}
    assert main(["--config", str(config), "--character", "Kage", "memory", "approve", "--all"]) == 0
    assert main(["--config", str(config), "--character", "Kage", "train", "--steps", "120"]) in (0, EXIT_GATE)
    kage, komorebi = (AdapterRegistry(homes[n] / "adapters") for n in ("kage", "komorebi"))
    assert [v.version for v in kage.versions()] == ["v0001"]
    assert not komorebi.versions() and not (homes["komorebi"] / "windows").exists()  # hers untouched
    if kage.active is None:  # the tiny learner's gate may refuse it; the operator makes it live anyway
        assert main(["--config", str(config), "--character", "Kage", "adapters", "activate", "v0001", "--force"]) == 0
    # running, Kage speaks with her adapter and Komorebi with the base model, on the one model they share
    model = LocalPersonaModel.load(base, sampling=Sampling(max_new_tokens=12, temperature=0))
    async with running(config, model, 50) as (app, records):
        await chat(app, records, [("Ada", "Kage, what is my cat called?"), ("Bo", "Komorebi, hello!"),
                                  ("Cy", "Kage, and mine?"), ("Dee", "Komorebi, bye!")])
    assert [(r.persona, r.adapter) for r in records] == [("Kage", "v0001"), ("Komorebi", None)] * 2
    # hers in before each of her turns, out before each of Komorebi's: while the other speaks, as the
    # next speaker's prompt is prepared (so one more, for the turn after the last)
    assert len(model.swaps) == 5
