"""The terminal chat as a person meets it: every typed line answered in the order typed (also when
piped in faster than she talks), /help answered here and never sent to the model, her greeting
said first, logs kept off the conversation."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from runtime import app as app_module
from runtime.app import build, companion
from runtime.config import load
from runtime.events import ChatMessage, Prompt, PromptContext, input_text
from tests.conftest import FastClock, write_config
from tests.fakes import ScriptedModel

ROOT = Path(__file__).resolve().parent.parent


class EchoModel:
    """Says back what it was told, so the order of the answers shows."""

    name = "echo"
    adapter = None
    traits: dict[str, float] = {}

    def render(self, context: PromptContext) -> Prompt:
        said = " ".join(e.text for e in context.inputs)
        return Prompt(said, (*context.history, ChatMessage("user", input_text(context.inputs))), 5)

    async def aclose(self) -> None:
        pass

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        yield f"You said {prompt.text.rstrip('?!.')}."


async def chat(tmp_path: Path, typed: str, model: object = None, **sections: object) -> tuple[str, object]:
    config = load(write_config(tmp_path, **sections), env={})
    out = io.StringIO()
    app = await build(config, model=model or EchoModel(), console=True, exit_when_sources_end=True,
                      stdin=io.StringIO(typed), stdout=out, clock=FastClock(50))
    await asyncio.wait_for(app.director.run(), 60)
    await app.aclose()
    return out.getvalue(), app


async def test_piped_lines_are_each_answered_in_the_order_typed(tmp_path):
    lines = ["hello", "what is your name?", "hello", "do you like tea?", "one more thing", "and another",
             "Testa, are you there?", "bye"]
    out, app = await chat(tmp_path, "".join(line + "\n" for line in lines))
    said = [line.removeprefix("Testa: ").strip() for line in out.splitlines()]
    # none dropped, none merged (the same line twice is two lines), none jumping the queue for a
    # question mark or the character's name, none lost to the per-viewer cap of a stream's chat
    assert said == [f"You said {line.rstrip('?')}." for line in lines]


async def test_help_and_unknown_commands_are_answered_here_not_by_the_model(tmp_path):
    model = ScriptedModel("Hi there.")
    out, app = await chat(tmp_path, "/help\n/dance\nhello\n", model)
    assert "/interrupt" in out and "/quit" in out  # the list of commands
    assert "unknown command /dance (/help lists them)" in out
    assert out.count("Testa: Hi there.") == 1  # only "hello" reached the model
    assert "Talking with" not in out  # piped: no prompt for a person


async def test_the_greeting_is_said_first_and_opens_the_history(tmp_path):
    persona = {"name": "Testa", "first_message": "[happy] Welcome, {{user}}! {{char}} saved you a seat."}
    out, app = await chat(tmp_path, "hello\n", persona=persona)
    assert [line.strip() for line in out.splitlines()] == ["Testa: Welcome, chat! Testa saved you a seat.",
                                                           "Testa: You said hello."]
    history = list(app.director.history)
    assert [m.role for m in history[:2]] == ["assistant", "user"]  # no invented user line before it
    (tmp_path / "off").mkdir()
    quiet, _ = await chat(tmp_path / "off", "hello\n", persona=persona, character={"greet": False})
    assert [line.strip() for line in quiet.splitlines()] == ["Testa: You said hello."]


async def test_mute_without_a_microphone_says_there_is_none(tmp_path, caplog):
    await chat(tmp_path, "/mute\nhello\n", ScriptedModel("Hi."))
    assert "there is no microphone to do that with" in caplog.text
    assert "unknown control command" not in caplog.text


async def test_a_companion_without_a_microphone_is_built_once(tmp_path, monkeypatch):
    builds = []
    real_build = app_module.build

    async def counted(*args: object, **kwargs: object) -> object:
        builds.append(kwargs.get("listen"))
        return await real_build(*args, **kwargs)

    monkeypatch.setattr(app_module, "build", counted)
    config = load(write_config(tmp_path, stt={"input": "microphone"}), env={})
    await asyncio.wait_for(companion(config, open_page=lambda url: None, model=ScriptedModel("Hi."),
                                     stdin=io.StringIO("hello\n"), exit_when_sources_end=True), 60)
    assert builds == ["if-possible"]


@pytest.mark.model
def test_in_a_terminal_the_chat_shows_a_hint_and_logs_go_to_their_file(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, model={"id": str(tiny_model_dir), "max_new_tokens": 20, "seed": 1},
                          chat={"console": {"enabled": True}})
    main, child = pty.openpty()  # a terminal, as a person has one
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "--config", str(config), "chat"], cwd=ROOT,
                            stdin=child, stdout=child, stderr=child, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    os.close(child)
    seen = b""
    try:
        deadline = time.monotonic() + 120
        while b"/help" not in seen and time.monotonic() < deadline:
            if select.select([main], [], [], 0.5)[0]:
                seen += os.read(main, 4096)
        os.write(main, b"hello there\n")
        while b"Testa: " not in seen.split(b"/help")[-1] and time.monotonic() < deadline:
            if select.select([main], [], [], 0.5)[0]:
                seen += os.read(main, 4096)
        os.write(main, b"/quit\n")
        proc.wait(30)
        while select.select([main], [], [], 0.2)[0]:
            try:
                seen += os.read(main, 4096)
            except OSError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    text = seen.decode(errors="replace")
    assert "Talking with Testa" in text and "Testa: " in text
    assert "overlay (an OBS browser source): http://127.0.0.1:" in text
    assert " info " not in text  # no log lines between the lines of the conversation
    logged = (tmp_path / "training_logs" / "omoide.log").read_text()
    assert " info " in logged and "character ready" in logged  # kept in the file instead
