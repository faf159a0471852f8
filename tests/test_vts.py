"""The VTube Studio client against a fake VTube Studio on 127.0.0.1 that speaks its real envelope
and errors: the token is requested once and reused, a revoked one renewed, the mouth follows the
voice's envelope and closes on an interrupt, expression tags trigger hotkeys, and the client comes
back after VTube Studio restarts."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

from plugins.avatar_vts import VtsAvatar, VtsClient
from runtime.cli import main
from runtime.events import AudioChunk, InputEvent, InputKind, Sentence
from runtime.ports import MonotonicClock
from tests.conftest import running, write_config
from tests.fake_vts import FakeVts
from tests.fakes import ScriptedModel
from tests.harness import until


@pytest.fixture
async def vts() -> AsyncIterator[FakeVts]:
    fake = FakeVts()
    await fake.start()
    yield fake
    await fake.stop()




def chunk(volumes: list[float], seq: int = 0) -> AudioChunk:
    """Silent PCM whose envelope says how loud each 20 ms slice is."""
    return AudioChunk("t1", seq, 0, b"\x00\x00" * (320 * len(volumes)), 16000, tuple(volumes), 20)


async def test_the_token_is_asked_once_kept_private_and_renewed_when_revoked(vts, tmp_path):
    token_file = tmp_path / "vts_token"
    client = VtsClient(vts.url, token_file)
    await client.connect()
    await client.close()
    await client.connect()  # a new session: the stored token is reused, no popup
    await client.close()
    assert vts.token_requests == 1 and token_file.read_text() in vts.tokens
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    vts.revoke()  # the user revoked the plugin: authentication says false
    await client.connect()
    assert vts.token_requests == 2 and token_file.read_text() in vts.tokens
    assert (await client.request("APIState"))["currentSessionAuthenticated"] is True
    await client.close()


async def test_a_denied_plugin_is_an_error_and_nothing_is_stored(vts, tmp_path):
    vts.deny = True
    client = VtsClient(vts.url, tmp_path / "vts_token")
    with pytest.raises(Exception, match="error 50"):
        await client.connect()
    assert not (tmp_path / "vts_token").exists()


async def test_requests_before_authentication_get_error_8(vts, tmp_path):
    async with connect(vts.url) as ws:
        await ws.send('{"apiName":"VTubeStudioPublicAPI","apiVersion":"1.0","requestID":"a","messageType":'
                      '"InjectParameterDataRequest","data":{"parameterValues":[{"id":"MouthOpen","value":1}]}}')
        assert '"errorID": 8' in await ws.recv()


async def test_the_mouth_follows_the_envelope_and_closes_on_an_interrupt(vts, tmp_path):
    avatar = VtsAvatar(VtsClient(vts.url, tmp_path / "t"), MonotonicClock(), rate_hz=100)
    await avatar.start()
    try:
        await until(lambda: avatar.sent > 0)  # connected, injecting (closed) at least once a second
        envelope = [0.2, 0.4, 0.6, 0.8, 1.0, 0.8, 0.6, 0.4, 0.2] * 5  # 0.9 s of speech
        await avatar.play(chunk(envelope))
        await until(lambda: vts.mouth() and vts.mouth()[-1] == 0.0 and max(vts.mouth()) > 0, 5)
        moving = [v for v in vts.mouth() if v > 0]
        # values from the envelope, at least 10 a second of speech (100 asked; a loaded CPU drops frames,
        # never the shape: several levels of it, the peak among them)
        assert len(moving) >= 9 and set(moving) <= set(envelope) and len(set(moving)) >= 4
        assert max(moving) == 1.0

        await avatar.play(chunk([0.9] * 200))  # 4 s of loud speech ...
        await until(lambda: vts.mouth()[-1] == 0.9)
        avatar.clear()  # ... interrupted
        interrupted_at = time.monotonic()
        await until(lambda: vts.mouth()[-1] == 0.0, 1)
        assert time.monotonic() - interrupted_at < 0.5
        sent = len(vts.injected)
        await asyncio.sleep(1.2)
        assert len(vts.injected) > sent  # still refreshed while silent, so VTube Studio keeps our control
    finally:
        await avatar.aclose()


async def test_expression_tags_trigger_hotkeys_and_unknown_ones_are_left_alone(vts, tmp_path, caplog):
    avatar = VtsAvatar(VtsClient(vts.url, tmp_path / "t"), MonotonicClock(), hotkeys={"happy": "Smile",
                                                                                       "mad": "hk-angry"})
    await avatar.start()
    try:
        await until(lambda: avatar.client.connected and avatar.sent > 0)
        await avatar.sentence(Sentence("t1", 0, "Yay!", ("happy", "wave")))
        await avatar.sentence(Sentence("t1", 1, "Hmph.", ("mad", "wave", "angry")))
        await until(lambda: len(vts.trigger_attempts) == 4)  # sent by the ticker, not by the turn
        await asyncio.sleep(0.1)
        assert vts.triggered == ["Smile", "Angry", "Angry"]  # by name, by id, by the tag's own name
        assert vts.trigger_attempts.count("wave") == 1  # unknown: asked once, then ignored
        assert sum("no hotkey" in r.getMessage() for r in caplog.records) == 1
    finally:
        await avatar.aclose()


async def test_the_client_comes_back_after_vtube_studio_restarts(vts, tmp_path):
    avatar = VtsAvatar(VtsClient(vts.url, tmp_path / "t"), MonotonicClock(), reconnect_s=(0.1, 0.5))
    await avatar.start()
    try:
        await until(lambda: avatar.sent > 0)
        await vts.stop()
        await avatar.play(chunk([0.5] * 10))  # speech goes on while VTube Studio is gone
        await avatar.sentence(Sentence("t1", 0, "Still here.", ("happy",)))
        vts.injected.clear()
        await vts.start()  # the same port
        await until(lambda: len(vts.injected) > 0)
        assert vts.token_requests == 1  # the stored token is reused after the restart
    finally:
        await avatar.aclose()


async def test_an_unknown_mouth_parameter_is_named_once(vts, tmp_path, caplog):
    avatar = VtsAvatar(VtsClient(vts.url, tmp_path / "t"), MonotonicClock(), mouth_parameter="ParamNope")
    await avatar.start()
    try:
        await until(lambda: 453 in vts.errors)
        await asyncio.sleep(1.2)
        assert sum("mouth parameter" in r.getMessage() for r in caplog.records) == 1
        assert avatar.client.connected  # no reconnect storm
    finally:
        await avatar.aclose()


async def test_a_running_character_moves_the_model_and_lists_its_hotkeys(vts, tmp_path, capsys):
    config = write_config(tmp_path, vts={"enabled": True, "url": vts.url, "token_file": str(tmp_path / "vts_token"),
                                         "hotkeys": {"happy": "Smile"}})
    async with running(config, ScriptedModel("[happy] Hello there, it is lovely to see you all tonight!")) as (
            app, records):
        await until(lambda: vts.injected)  # connected in the background
        app.director.submit(InputEvent(InputKind.CHAT, "hi!", "test", app.director.cast.clock.now(), "viewer"))
        await until(lambda: records, 30)
    assert vts.triggered == ["Smile"] and max(vts.mouth()) > 0 and vts.mouth()[-1] == 0.0
    assert await asyncio.to_thread(main, ["--config", str(config), "vts", "hotkeys"]) == 0
    out = capsys.readouterr().out
    assert "Smile" in out and "hk-angry" in out and vts.token_requests == 1  # the token was reused
    await vts.stop()
    assert await asyncio.to_thread(main, ["--config", str(config), "vts", "hotkeys"]) == 2
    assert "cannot talk to VTube Studio" in capsys.readouterr().err


async def test_in_a_duo_each_character_moves_her_own_vtube_studio(tmp_path):
    kage_vts = FakeVts()
    await kage_vts.start()
    komorebi_vts = FakeVts()
    await komorebi_vts.start()
    try:
        config = write_config(tmp_path, collab={"banter": 0},
                              vts={"enabled": True, "url": komorebi_vts.url, "token_file": str(tmp_path / "vts_token")})
        config.write_text(config.read_text() + "\n".join([
            '[[characters]]', 'name = "Komorebi"', 'greet = false',
            '[[characters]]', 'name = "Kage"', 'greet = false', f'vts = {{ url = "{kage_vts.url}" }}', ""]))
        async with running(config, ScriptedModel("Hello there, it is lovely to see you all tonight!"), 4) as (
                app, records):
            await until(lambda: kage_vts.injected or komorebi_vts.injected)
            for text in ("Kage, hi!", "Komorebi, hi!"):
                n = len(records)
                app.director.submit(InputEvent(InputKind.CHAT, text, "test", app.director.cast.clock.now(), "viewer"))
                await until(lambda n=n: len(records) > n, 30)
                moved = kage_vts if text.startswith("Kage") else komorebi_vts
                still = komorebi_vts if moved is kage_vts else kage_vts
                # her mouth moved on her own model, while the other's stayed shut
                assert max(moved.mouth()) > 0 and not any(still.mouth()), text
                moved.injected.clear()
    finally:
        await kage_vts.stop()
        await komorebi_vts.stop()
    # each asked for her own token, kept in her home (Komorebi's in [vts] token_file, the shared one)
    assert (tmp_path / "characters" / "kage" / "vts_token").exists() and (tmp_path / "vts_token").exists()
