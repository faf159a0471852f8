"""The browser overlay in real headless Chromium (Debian's, driven by Playwright; no browser is
downloaded): served by the avatar channel, it shows a turn's captions in order, moves its mouth
with the voice's envelope, shows the expression, and in companion mode the text box starts a turn."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from typing import Any

import pytest
from playwright.async_api import async_playwright

from runtime.events import InputEvent, InputKind
from tests.conftest import AvatarClient, running, write_config
from tests.fakes import ScriptedModel

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--mute-audio"]
REPLY = "[happy] Hello there, friend, it is so good to see you. This is the second sentence of my reply."

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium")


async def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_overlay_shows_a_turn_and_its_text_box_starts_one(tmp_path):
    config = write_config(tmp_path, turn={"first_sentence_min_chars": 10})
    async with running(config, ScriptedModel(REPLY, delay=0.01), 2) as (app, records), async_playwright() as p:
        assert app.avatar is not None
        async with AvatarClient(f"ws://127.0.0.1:{app.avatar.port}") as listener:
            with tempfile.TemporaryDirectory() as profile:
                browser = await p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                                    args=FLAGS, viewport={"width": 900, "height": 260})
                page = browser.pages[0] if browser.pages else await browser.new_page()
                await page.goto(f"http://127.0.0.1:{app.avatar.port}/overlay?companion=1")
                await until(lambda: page.evaluate("window.overlay.state === 'listening'"))

                app.director.submit(InputEvent(InputKind.CHAT, "hi!", "test", app.director.cast.clock.now(), "viewer"))
                await until(lambda: asyncio.sleep(0, result=bool(records)))
                sent = [m["text"] for m in listener.messages if m["type"] == "sentence"]
                await until(lambda: page.evaluate(f"window.overlay.captions.length >= {len(sent)}"))
                assert await page.evaluate("window.overlay.captions") == sent and len(sent) >= 2
                mouths = await page.evaluate("window.overlay.mouths")
                assert max(mouths) > 0.1 and len(set(mouths)) > 3  # the mouth moved with the envelope
                await until(lambda: page.evaluate("window.overlay.mouth === 0"))  # and closed after
                assert await page.get_attribute("#expression", "data-name") == "happy"
                await until(lambda: page.evaluate("'first_audio' in (window.overlay.timings || {})"))
                assert "first audio" in (await page.text_content("#latency") or "")  # the turn's own stage times
                await page.screenshot(path=str(tmp_path / "overlay.png"))

                await page.fill("#say", "hello from the page")
                await page.press("#say", "Enter")
                await until(lambda: asyncio.sleep(0, result=len(records) == 2))
                assert records[1].inputs[0].text == "hello from the page" and records[1].inputs[0].source == "overlay"
                await page.click("[data-control=interrupt]")  # a control the page sends: accepted, no error
                await asyncio.sleep(0.3)
                await browser.close()
    assert (tmp_path / "overlay.png").stat().st_size > 1000
