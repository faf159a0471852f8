"""Trait sliders (docs/traits.md#sliders), on the bundled model: a setting changes what she says
from her next reply on (never the one being generated), zero gives her back exactly, and a
running character takes settings from `omoide persona set`, the avatar channel and the companion
page without a restart, records them with each turn, and refuses a bad one by name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from persona_model.generation import Sampling
from persona_model.local import LocalPersonaModel
from persona_model.sliders import traits_from
from persona_model.steering import Sliders, read_gguf
from persona_model.traits import BUNDLED
from runtime.cli import main
from runtime.events import Prompt
from tests.conftest import running, write_config
from tests.harness import until
from tests.test_live_loop import say
from tests.test_overlay import chromium, needs_chromium

pytestmark = pytest.mark.real
SYSTEM = "You are Testa, a VTuber. Answer the viewer in one or two sentences."


@pytest.fixture(scope="module")
def greedy(bundled_model_dir: Path) -> Any:
    """The bundled model, greedy: the same prompt and setting give the same words."""
    return LocalPersonaModel.load(bundled_model_dir, name="bundled", sampling=Sampling(temperature=0, max_new_tokens=16))


def prompt(model: LocalPersonaModel, text: str) -> Prompt:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return Prompt(model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), (), 0)


async def reply(model: LocalPersonaModel, p: Prompt) -> tuple[str, int]:
    """The reply's text and how many prompt tokens came from the kept cache."""
    text = "".join([piece async for piece in model.stream(p)])
    return text, model.last_stats.cached_tokens


@contextlib.asynccontextmanager
async def sliders_on(model: LocalPersonaModel, cache: Path) -> AsyncIterator[Sliders]:
    sliders = Sliders(model.model, model.tokenizer, traits_from(BUNDLED), SYSTEM, model_name=model.name, cache=cache)
    model.attach_sliders(sliders)
    try:
        yield sliders
    finally:
        model.set_traits({})  # the module's model serves the next test unsteered
        await asyncio.to_thread(model.join)


async def test_a_setting_changes_her_next_reply_only_and_at_zero_she_is_herself_again(greedy, tmp_path):
    p = prompt(greedy, "What are we playing today?")
    async with sliders_on(greedy, tmp_path):
        plain, _ = await reply(greedy, p)
        again, cached = await reply(greedy, p)
        assert again == plain and cached > 16  # the same prompt again: its start comes from the kept cache
        greedy.set_traits({"energy": 8.0})
        loud, cached = await reply(greedy, p)
        assert loud != plain and greedy.traits == {"energy": 8.0}
        assert cached == 0  # the kept cache was computed unsteered: dropped, not reused
        greedy.set_traits({"energy": -8.0})
        quiet, _ = await reply(greedy, p)
        assert quiet not in (plain, loud)
        greedy.set_traits({})
        assert (await reply(greedy, p))[0] == plain and greedy.traits == {}
        # moved while she speaks: the reply being generated keeps the setting it started with
        pieces = []
        async with contextlib.aclosing(greedy.stream(p)) as stream:
            async for piece in stream:
                if not pieces:
                    greedy.set_traits({"energy": 8.0})
                pieces.append(piece)
        assert "".join(pieces) == plain  # (the new setting may be taken the moment this reply ends)
        assert (await reply(greedy, p))[0] == loud and greedy.traits == {"energy": 8.0}
    # the vector is kept as a llama.cpp control vector (layer 12 of 30, the model's hidden size)
    [kept] = tmp_path.iterdir()
    assert kept.name.startswith("energy-L12-") and kept.suffix == ".gguf"
    [(layer, direction)] = read_gguf(kept).items()
    assert layer == 12 and direction.shape == (greedy.model.config.hidden_size,)


async def ask(ws: Any, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    return dict(json.loads(await ws.recv()))


async def test_a_running_character_takes_sliders_from_the_cli_and_the_avatar_channel(greedy, tmp_path, caplog, capsys):
    config = write_config(tmp_path)
    file = tmp_path / "training_logs" / "sliders.json"
    async with running(config, greedy, 20) as (app, records):
        say(app, "hi!")
        await until(lambda: len(records) == 1)
        assert records[0].traits == {}

        assert main(["persona", "set", "energy=6", "--config", str(config)]) == 0  # another process, as a user would
        assert re.search(r"energy +\+6\.0", capsys.readouterr().out)
        await until(lambda: greedy.traits == {"energy": 6.0})  # read within a second, taken between replies
        say(app, "and now?")
        await until(lambda: len(records) == 2)
        assert records[1].traits == {"energy": 6.0}

        with caplog.at_level(logging.WARNING):  # a broken file: said, and the settings before are kept
            file.write_text("{energy: loud")
            await until(lambda: "sliders file cannot be used" in caplog.text)
        assert greedy.traits == {"energy": 6.0}

        assert app.avatar is not None
        async with websockets.connect(f"ws://127.0.0.1:{app.avatar.port}/?control={app.avatar.control_token}") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            listed = await ask(ws, {"type": "sliders", "request_id": 1})
            assert [(s["name"], s["value"]) for s in listed["sliders"]] == [("energy", 6.0), ("warmth", 0.0), ("sass", 0.0)]
            assert listed["limit"] == 8.0 and listed["sliders"][0]["high"]
            moved = await ask(ws, {"type": "sliders_set", "request_id": 2, "values": {"sass": -3}})
            assert {s["name"]: s["value"] for s in moved["sliders"]} == {"energy": 6.0, "warmth": 0.0, "sass": -3.0}
            too_far = await ask(ws, {"type": "sliders_set", "values": {"energy": 99}})
            assert too_far["type"] == "error" and "energy = 99 is beyond the limit of ±8" in too_far["message"]
            unknown = await ask(ws, {"type": "sliders_set", "values": {"chaos": 1}})
            assert "no slider 'chaos'" in unknown["message"]
        assert json.loads(file.read_text()) == {"energy": 6.0, "sass": -3.0}  # kept for the next start
        say(app, "one more")
        await until(lambda: len(records) == 3)
        assert records[2].traits == {"energy": 6.0, "sass": -3.0}
        await app.memory.flush()
        rows = sqlite3.connect(app.memory.path).execute("SELECT traits FROM turns ORDER BY started_at").fetchall()
        assert [json.loads(r) for (r,) in rows] == [{}, {"energy": 6.0}, {"energy": 6.0, "sass": -3.0}]
    assert greedy.traits == {}  # a closed character leaves the model as it found it


def test_the_cli_lists_sets_and_refuses_a_bad_setting_by_name(tmp_path, capsys):
    config = str(write_config(tmp_path))
    assert main(["persona", "sliders", "--config", config]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"energy +\+0\.0", listed) and "sass" in listed and "-8 .. +8" in listed
    assert main(["persona", "set", "energy=2.5", "sass=-1", "--config", config]) == 0
    assert main(["persona", "set", "warmth=1", "--config", config]) == 0  # the others keep theirs
    assert json.loads((tmp_path / "training_logs" / "sliders.json").read_text()) == {
        "energy": 2.5, "sass": -1.0, "warmth": 1.0}
    capsys.readouterr()
    for bad, says in (("energy=loud", "'energy=loud': the setting must be a number"),
                      ("chaos=1", "no slider 'chaos'"), ("energy=9", "energy = 9 is beyond the limit of ±8"),
                      ("energy", "give NAME=VALUE")):
        assert main(["persona", "set", bad, "--config", config]) == 1
        assert says in capsys.readouterr().err
    (tmp_path / "training_logs" / "sliders.json").write_text("[1, 2]")
    assert main(["persona", "set", "energy=1", "--config", config]) == 1
    assert "persona set --reset" in capsys.readouterr().err
    assert main(["persona", "set", "energy=1", "--reset", "--config", config]) == 0
    assert json.loads((tmp_path / "training_logs" / "sliders.json").read_text()) == {"energy": 1.0}


@pytest.mark.slow
@needs_chromium
async def test_the_companion_page_shows_the_sliders_and_moving_one_reaches_her_next_reply(greedy, tmp_path):
    config = write_config(tmp_path)
    async with running(config, greedy, 20) as (app, records), chromium({"width": 900, "height": 700}) as browser:
        assert app.avatar is not None
        page = browser.pages[0] if browser.pages else await browser.new_page()
        await page.goto(f"http://127.0.0.1:{app.avatar.port}/overlay?companion=1&control={app.avatar.control_token}")
        await until(lambda: page.evaluate("document.querySelectorAll('#sliders input').length === 3"))
        assert await page.get_attribute("#sliders input[name=warmth]", "min") == "-8"
        await page.fill("#sliders input[name=warmth]", "4")  # fires input and change, as a drag does
        await until(lambda: greedy.traits == {"warmth": 4.0})
        assert await page.text_content("#slider-warmth") == "4.0"
        await page.fill("#say", "hello from the page")
        await page.press("#say", "Enter")
        await until(lambda: len(records) == 1)
        assert records[0].traits == {"warmth": 4.0}
