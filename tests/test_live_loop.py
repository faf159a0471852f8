"""The live loop end to end, with real components: a character wired from a config file, a tiny
model (or a scripted one where exact sentences matter), espeak-ng, the SQLite log, and real
WebSocket clients of the avatar channel on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import socket
import sqlite3
import wave
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runtime.app import App, build
from runtime.config import load
from runtime.events import (
    Control,
    InputEvent,
    InputKind,
    Priority,
    PromptContext,
    TurnRecord,
    TurnStatus,
    viewer_key,
)
from tests.conftest import AvatarClient, FastClock, running, write_config
from tests.fakes import ScriptedModel
from tests.harness import until

LONG = ("[happy] Hello there, friend. I have a lot to say today. The first thing is about turnips. "
        "The second thing is about the weather. The third thing is about music. "
        "The fourth thing is a secret. The fifth thing is a riddle. The sixth thing is a song. "
        "The seventh thing is a dance. The eighth thing is a nap. The ninth thing is snacks. "
        "And the last thing is goodbye for now.")
LONG_SENTENCES = 12


@contextlib.asynccontextmanager
async def character(tmp_path: Any, model: Any, speed: float = 20.0, **sections: Any) -> AsyncIterator[
        tuple[App, list[TurnRecord]]]:
    async with running(write_config(tmp_path, **sections), model, speed) as (app, records):
        yield app, records


def say(app: App, text: str, author: str = "viewer", priority: Priority = Priority.NORMAL) -> InputEvent:
    event = InputEvent(InputKind.CHAT, text, "test", app.director.cast.clock.now(), author, priority)
    app.director.submit(event)
    return event




def db_rows(app: App, sql: str) -> list[tuple[Any, ...]]:
    return sqlite3.connect(app.memory.path).execute(sql).fetchall()


def turn_messages(client: AvatarClient, turn_id: str) -> list[dict[str, Any]]:
    return [m for m in client.messages if m.get("turn_id") == turn_id]


@pytest.mark.model
async def test_a_typed_message_gets_a_streamed_spoken_reply_in_the_terminal(tmp_path, tiny_model):
    config = load(write_config(tmp_path), env={})
    out = io.StringIO()
    app = await build(config, model=tiny_model, console=True, exit_when_sources_end=True,
                      stdin=io.StringIO("hello there!\n"), stdout=out, clock=FastClock(50))
    await asyncio.wait_for(app.director.run(), 60)
    await app.aclose()
    [(spoken, status, prompt)] = db_rows(app, "select spoken_text, status, prompt from turns")
    assert status == "complete" and spoken
    assert out.getvalue() == f"Testa: {spoken} \n"
    assert "you: hello there!" in prompt
    assert db_rows(app, "select author, text, source from inputs") == [("you", "hello there!", "console")]


@pytest.mark.model
async def test_avatar_client_receives_the_turn_in_order_with_audio_and_envelopes(tmp_path, tiny_model):
    async with character(tmp_path, tiny_model) as (app, records):
        assert app.avatar is not None
        async with AvatarClient(f"ws://127.0.0.1:{app.avatar.port}") as client:
            event = say(app, "what do you like to play?")
            end = await client.wait_for(lambda m: m["type"] == "turn_end")
            await until(lambda: records)
        await app.memory.flush()
        record = records[0]
        msgs = turn_messages(client, record.turn_id)
        kinds = [m["type"] for m in msgs]
        assert kinds[0] == "turn_start" and kinds[-1] == "turn_end"
        assert msgs[0]["inputs"] == [{"source": "test", "author": "viewer", "text": event.text, "kind": "chat"}]
        sentences = [m for m in msgs if m["type"] == "sentence"]
        assert sentences and [s["seq"] for s in sentences] == sorted(s["seq"] for s in sentences)
        # each sentence: its subtitle, then its expressions, then its audio chunks in order
        current = None
        for m in msgs[1:-1]:
            if m["type"] == "sentence":
                current, index = m, 0
            else:
                assert current is not None and m["seq"] == current["seq"]
                if m["type"] == "audio":
                    assert m["index"] == index
                    index += 1
        audio = [m for m in msgs if m["type"] == "audio"]
        assert audio, "no audio reached the avatar"
        for m in audio:
            with wave.open(io.BytesIO(base64.b64decode(m["audio"]))) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (m["sample_rate"], 1, 2)
                assert w.getnframes() == m["samples"]
            assert len(m["volumes"]) == math.ceil(m["duration_ms"] / m["slice_ms"])
            assert all(0.0 <= v <= 1.0 for v in m["volumes"])
        assert max(v for m in audio for v in m["volumes"]) > 0.05, "the envelope is flat: no speech?"
        spoken = " ".join(s["text"] for s in sentences if s["text"])
        assert end["spoken_text"] == spoken and end["interrupted"] is False
        # the log holds the prompt exactly as sent, and what was spoken
        [(prompt, db_spoken, status, timings)] = db_rows(
            app, "select prompt, spoken_text, status, timings from turns")
        recalled = await app.memory.recall(event.text, 3, viewer_key(event))  # the viewer's profile
        assert recalled and recalled[0].text.startswith("About viewer: new today")
        expected = tiny_model.render(PromptContext(app.director.cast.persona, (event,), (), tuple(recalled)))
        assert prompt == expected.text
        assert db_spoken == spoken and status == "complete"
        stages = ["input_received", "prompt_ready", "first_token", "first_sentence", "first_audio", "last_audio"]
        assert list(record.timings) == stages
        assert [record.timings[s] for s in stages] == sorted(record.timings[s] for s in stages)


async def test_an_interrupted_turn_records_only_what_was_heard(tmp_path):
    model = ScriptedModel(LONG)
    async with character(tmp_path, model, speed=10) as (app, records):
        async with AvatarClient(f"ws://127.0.0.1:{app.avatar.port}") as client:
            say(app, "tell me everything")
            # sentence 2 starts only once sentence 1 has been fully played
            third = await client.wait_for(lambda m: m["type"] == "sentence" and m["seq"] == 2)
            app.director.submit(InputEvent(InputKind.CONTROL, Control.INTERRUPT, "test", 0.0,
                                           priority=Priority.CRITICAL))
            end = await client.wait_for(lambda m: m["type"] == "turn_end")
            await until(lambda: records)
            await asyncio.sleep(0.2)
        record = records[0]
        assert record.status is TurnStatus.INTERRUPTED and record.interrupt_reason == "operator"
        assert record.spoken_text.startswith("Hello there, friend. I have a lot to say today.")
        assert "goodbye" not in record.spoken_text
        assert record.interrupted_at is not None and record.interrupted_at >= 2
        assert end["interrupted"] is True and end["spoken_text"] == record.spoken_text
        # generation ran at most a few sentences ahead of speech, and was stopped with it
        assert model.closed_early, "generation was not stopped"
        # nothing of the turn reaches the avatar after its end
        msgs = turn_messages(client, record.turn_id)
        assert msgs[-1]["type"] == "turn_end"
        assert not any(m["type"] == "sentence" and m["seq"] > third["seq"] + 1 for m in msgs)
        # history and the log see the spoken part only, with no invented "[interrupted]" message
        assert app.director.history[-1].content == record.spoken_text
        await app.memory.flush()
        [(spoken, status, cut)] = db_rows(app, "select spoken_text, status, interrupted_at from turns")
        assert (spoken, status, cut) == (record.spoken_text, "interrupted", record.interrupted_at)


async def test_a_critical_input_preempts_the_turn_in_flight(tmp_path):
    async with character(tmp_path, ScriptedModel(LONG), speed=5) as (app, records):
        say(app, "tell me everything")
        await until(lambda: app.director.current is not None and app.director.current.record.timings.get(
            "first_audio") is not None)
        say(app, "the game needs you now", priority=Priority.CRITICAL)
        await until(lambda: len(records) == 2)
        assert records[0].status is TurnStatus.INTERRUPTED and records[0].interrupt_reason == "preempted"
        assert records[1].inputs[0].text == "the game needs you now"


async def test_a_reply_ends_after_its_sentence_cap_and_the_model_is_stopped(tmp_path):
    model = ScriptedModel(LONG)
    async with character(tmp_path, model, turn={"max_sentences": 3}) as (app, records):
        say(app, "tell me everything")
        await until(lambda: records)
    assert records[0].status is TurnStatus.COMPLETE
    assert records[0].spoken_text == "Hello there, friend. I have a lot to say today. The first thing is about turnips."
    assert model.closed_early  # generation stopped there, not run to the end unheard


async def test_a_model_saying_a_sentence_again_is_stopped_there(tmp_path):
    model = ScriptedModel("I am so glad you came. You are a special person. I am so glad you came. Again and again.")
    async with character(tmp_path, model) as (app, records):
        say(app, "hi")
        await until(lambda: records)
    assert records[0].spoken_text == "I am so glad you came. You are a special person."
    assert model.closed_early


async def test_a_sentence_going_round_in_circles_ends_the_reply(tmp_path):
    loop = ", ".join(["I'm thinking about myself again"] * 8)
    model = ScriptedModel(f"Hello there, friend. {loop}. More after it.")
    async with character(tmp_path, model) as (app, records):
        say(app, "what are you thinking about?")
        await until(lambda: records)
    assert records[0].spoken_text == "Hello there, friend."
    assert model.closed_early


async def test_moderation_holds_back_a_blocked_sentence(tmp_path):
    model = ScriptedModel("Hello chat. Here is a forbidden word. Goodbye now.")
    async with character(tmp_path, model, moderation={"blocklist": ["forbidden"]}) as (app, records):
        async with AvatarClient(f"ws://127.0.0.1:{app.avatar.port}") as client:
            say(app, "say something")
            await client.wait_for(lambda m: m["type"] == "turn_end")
            await until(lambda: records)
        texts = [m["text"] for m in client.messages if m["type"] == "sentence"]
        assert texts == ["Hello chat.", "Goodbye now."]
        assert records[0].moderated == ("Here is a forbidden word.",)
        assert records[0].spoken_text == "Hello chat. Goodbye now."


async def test_late_slow_and_vanishing_clients_never_stall_the_turn(tmp_path, caplog):
    model = ScriptedModel(LONG)
    async with character(tmp_path, model, speed=10, avatar={"port": 0, "queue_size": 8}) as (app, records):
        url = f"ws://127.0.0.1:{app.avatar.port}"
        stuck = _stuck_client(app.avatar.port)  # connects, then never reads a byte
        async with AvatarClient(url) as good:
            vanishing = await AvatarClient(url).__aenter__()
            say(app, "tell me everything")
            await good.wait_for(lambda m: m["type"] == "audio")
            await vanishing.__aexit__(None, None, None)
            async with AvatarClient(url) as late:
                end = await good.wait_for(lambda m: m["type"] == "turn_end", timeout=30)
                await late.wait_for(lambda m: m["type"] == "turn_end", timeout=5)
            await until(lambda: records)
        stuck.close()
        assert "avatar client too slow; disconnected" in caplog.text
        assert records[0].status is TurnStatus.COMPLETE
        assert end["spoken_text"] == records[0].spoken_text
        # the good client got every sentence; the late one got the turn from where it joined
        assert [m["seq"] for m in good.messages if m["type"] == "sentence"] == list(range(LONG_SENTENCES))
        late_kinds = [m["type"] for m in late.messages]
        assert late_kinds[:2] == ["hello", "turn_start"] and late_kinds[-1] == "turn_end"
        await until(lambda: app.avatar.clients == 0, timeout=5)  # every departure was noticed


def _stuck_client(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return sock
