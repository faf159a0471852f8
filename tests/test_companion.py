"""`omoide companion` on a machine with no microphone and no speakers (like this one): it starts
anyway, takes typed text, and opens the overlay page with the page playing the voice."""

from __future__ import annotations

import asyncio
import io
import urllib.request

from runtime.app import companion
from runtime.config import load
from tests.conftest import write_config
from tests.fakes import ScriptedModel


async def test_the_companion_starts_without_microphone_or_speakers_and_opens_its_page(tmp_path, caplog, capsys):
    config = load(write_config(tmp_path, stt={"input": "microphone"}, twitch={"enabled": True},
                               avatar={"enabled": False}), env={})
    opened: list[str] = []
    pages: list[bytes] = []

    def open_page(url: str) -> None:
        opened.append(url)
        pages.append(urllib.request.urlopen(url, timeout=10).read())  # the page is really served

    stdin = io.StringIO("hello there\n")
    await asyncio.wait_for(companion(config, open_page=open_page, model=ScriptedModel("Hi! Nice to meet you."),
                                     stdin=stdin, exit_when_sources_end=True), 60)
    assert len(opened) == 1 and opened[0].endswith("&audio=1")  # no speakers: the page plays it
    token = (tmp_path / "training_logs" / "avatar_control.token").read_text().strip()
    assert f"/overlay?companion=1&control={token}&" in opened[0]  # the page may type; other pages only listen
    assert (tmp_path / "training_logs" / "avatar_control.token").stat().st_mode & 0o077 == 0  # yours alone
    assert b"Omoide overlay" in pages[0]
    assert any("typed text only" in r.getMessage() for r in caplog.records)  # no microphone here
    out = capsys.readouterr().out
    assert "companion page: http://127.0.0.1:" in out and "Nice to meet you" in out  # the typed line was answered
