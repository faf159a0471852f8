"""The browser overlay in real headless Chromium (Debian's, driven by Playwright; no browser is
downloaded), served by the avatar channel of a running character: on an OBS source its captions
are readable, wrap, and fade after the turn, and the latency shows only with ?debug=1; the companion
page shows the conversation, both sides in order, and its text box and Stop button work; with
?audio=1 it asks for the click a browser wants before it plays sound. And the avatar port answers
a browser's stray requests (/favicon.ico) with a plain 404."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from playwright.async_api import BrowserContext, async_playwright

from plugins.avatar_ws import AvatarServer
from runtime.events import InputEvent, InputKind
from tests.conftest import AvatarClient, running, write_config
from tests.fakes import ScriptedModel
from tests.harness import until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# sound waits for a click, as in a desktop browser (headless Chromium would allow it)
FLAGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--mute-audio",
         "--autoplay-policy=document-user-activation-required"]
OBS = {"width": 900, "height": 260}  # the Browser source size the README gives
REPLY = "[happy] Hello there, friend, it is so good to see you. This is the second sentence of my reply."
LONG = ("Today I would like to tell you about the little tea shop at the end of my street where the owner"
        " keeps a sleepy cat on the counter and plays old records all afternoon while the kettle hums along.")

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium")




@contextlib.asynccontextmanager
async def chromium(viewport: dict[str, int]) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as p:
        with tempfile.TemporaryDirectory() as profile:
            browser = await p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                                args=FLAGS, viewport=viewport)
            try:
                yield browser
            finally:
                await browser.close()


def say(app: Any, text: str, author: str = "viewer") -> None:
    app.director.submit(InputEvent(InputKind.CHAT, text, "test", app.director.cast.clock.now(), author))


@needs_chromium
async def test_on_an_obs_source_captions_wrap_fade_after_the_turn_and_latency_shows_only_with_debug(tmp_path):
    config = write_config(tmp_path, turn={"first_sentence_min_chars": 10})
    async with running(config, ScriptedModel(f"[happy] Hi there! {LONG}", delay=0.005), 6) as (app, records), \
            chromium(OBS) as browser:
        assert app.avatar is not None
        base = f"http://127.0.0.1:{app.avatar.port}/overlay"
        obs, debug = browser.pages[0] if browser.pages else await browser.new_page(), await browser.new_page()
        await browser.clock.install()  # the page's timers run on a clock the test can move on
        await obs.goto(base)
        await debug.goto(base + "?debug=1")
        for page in (obs, debug):
            await until(lambda page=page: page.evaluate("window.overlay.state === 'listening'"))

        say(app, "tell me something")
        await until(lambda: obs.evaluate(f"document.getElementById('caption').textContent === {LONG!r}"))
        box = await obs.locator("#caption").bounding_box()
        assert box is not None and box["width"] <= OBS["width"] and box["x"] + box["width"] <= OBS["width"]
        assert box["height"] > 60 and box["y"] + box["height"] <= OBS["height"]  # wrapped onto lines, all inside
        assert await obs.get_attribute("#expression", "data-name") == "happy"
        await obs.screenshot(path=str(tmp_path / "overlay.png"), omit_background=True)  # docs/overlay.png

        await until(lambda: asyncio.sleep(0, result=bool(records)))
        await until(lambda: debug.evaluate("'first_audio' in (window.overlay.timings || {})"))
        assert "first audio" in (await debug.text_content("#latency") or "")  # the turn's own stage times
        assert await debug.is_visible("#latency") and not await obs.is_visible("#latency")

        opacity = "getComputedStyle(document.getElementById('caption')).opacity"
        await browser.clock.run_for(1000)
        assert await obs.is_visible("#caption") and await obs.evaluate(opacity) == "1"  # the last caption stays...
        await browser.clock.run_for(4000)
        await until(lambda: obs.evaluate(f"{opacity} === '0'"), 3)  # ...and is gone 5 s after the turn
    assert (tmp_path / "overlay.png").stat().st_size > 1000


@needs_chromium
async def test_the_companion_page_shows_the_conversation_in_order_and_its_stop_button_cuts_the_reply(tmp_path):
    config = write_config(tmp_path, turn={"first_sentence_min_chars": 10})
    async with running(config, ScriptedModel(REPLY, delay=0.01), 3) as (app, records), \
            chromium({"width": 900, "height": 600}) as browser:
        assert app.avatar is not None
        async with AvatarClient(f"ws://127.0.0.1:{app.avatar.port}") as listener:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(f"http://127.0.0.1:{app.avatar.port}/overlay?companion=1&control={app.avatar.control_token}")
            await until(lambda: page.evaluate("window.overlay.state === 'listening'"))
            lines = ("[...document.querySelectorAll('#transcript .line')].map((l) => [l.className,"
                     " l.querySelector('.who').textContent, l.querySelector('.text').textContent])")

            say(app, "hi!")
            await until(lambda: asyncio.sleep(0, result=bool(records)))
            sent = [m["text"] for m in listener.messages if m["type"] == "sentence"]
            await until(lambda: page.evaluate(f"window.overlay.captions.length >= {len(sent)}"))
            assert await page.evaluate("window.overlay.captions") == sent and len(sent) >= 2
            mouths = await page.evaluate("window.overlay.mouths")
            assert max(mouths) > 0.1 and len(set(mouths)) > 3  # the mouth moved with the envelope
            await until(lambda: page.evaluate("window.overlay.mouth === 0"))  # and closed after
            assert await page.get_attribute("#expression", "data-name") == "happy"
            first = [["line input", "viewer", "hi!"], ["line reply", "Testa", " ".join(sent)]]
            assert await page.evaluate(lines) == first

            await page.fill("#say", "hello from the page")
            await page.press("#say", "Enter")
            await until(lambda: page.evaluate("document.querySelectorAll('.line.reply').length === 2"
                                              " && !document.querySelector('.line.reply:last-child.thinking')"))
            await page.click("[data-control=interrupt]")  # Stop, while the second reply is being spoken
            await until(lambda: asyncio.sleep(0, result=len(records) == 2))
            assert records[1].inputs[0].text == "hello from the page" and records[1].inputs[0].source == "overlay"
            assert records[1].interrupted
            await until(lambda: page.is_visible(".line.reply.interrupted .mark"))
            author = records[1].inputs[0].author
            assert await page.evaluate(lines) == [*first, ["line input", author, "hello from the page"],
                                                  ["line reply interrupted", "Testa", records[1].spoken_text]]
            assert records[1].spoken_text != " ".join(sent)  # only what was heard of the cut reply
            assert await page.text_content(".line.reply.interrupted .mark") == "(interrupted)"
            assert await page.is_visible("#say") and not await page.is_visible("#caption")


@needs_chromium
async def test_with_audio_the_page_asks_for_a_click_then_plays_the_voice(tmp_path):
    config = write_config(tmp_path, turn={"first_sentence_min_chars": 10})
    async with running(config, ScriptedModel("Can you hear me now?", delay=0.005), 4) as (app, records), \
            chromium(OBS) as browser:
        assert app.avatar is not None
        page = browser.pages[0] if browser.pages else await browser.new_page()
        await page.goto(f"http://127.0.0.1:{app.avatar.port}/overlay?audio=1")
        await until(lambda: page.is_visible("#sound"), 5)  # the browser blocks sound until a click
        assert "enable sound" in (await page.text_content("#sound") or "")
        await page.mouse.click(450, 130)
        await until(lambda: page.is_hidden("#sound"), 5)
        say(app, "hello?")
        await until(lambda: page.evaluate("window.overlay.played > 0"))  # and the voice plays
        await until(lambda: asyncio.sleep(0, result=bool(records)))


async def test_the_avatar_port_answers_a_browsers_stray_requests_with_404_and_websockets_on_any_path():
    server = AvatarServer(port=0, character="Testa")
    await server.start()
    base = f"127.0.0.1:{server.port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{base}{path}", timeout=5) as answer:
                return int(answer.status), answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        status, text = await asyncio.to_thread(get, "/favicon.ico")
        assert status == 404 and "/overlay" in text
        assert (await asyncio.to_thread(get, "/"))[0] == 404
        assert (await asyncio.to_thread(get, "/overlay"))[0] == 200
        for path in ("/", "/favicon.ico", "/overlay"):
            async with websockets.connect(f"ws://{base}{path}") as ws:
                assert '"type":"hello"' in str(await ws.recv())
    finally:
        await server.aclose()
