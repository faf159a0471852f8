"""Property-based attacks on every input surface (hypothesis): game API frames and schemas, avatar
channel messages, Twitch events, character cards (JSON and PNG), config files and environment
overrides. The rule under test: a clear error naming what was wrong, and the connection, the
server and everything stored carry on. Inputs that once broke something are replayed from
tests/fuzz/corpus by test_fuzz_corpus.py."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona_model.card import (
    MAX_TEXT_BYTES,
    CardError,
    load_card,
    parse_card,
    parse_card_bytes,
    png_with_card,
)
from persona_model.json_schema import SchemaError, grammar, tighten
from plugins.avatar_ws import AvatarServer
from plugins.chat_twitch import TwitchEvents
from plugins.game_neuro import GameServer, ProtocolError, check_schema
from runtime.config import ConfigError, load
from runtime.events import InputKind
from tests.conftest import FastClock
from tests.test_twitch import chat_event, create_event_instance, frame

FUZZ = settings(max_examples=int(os.environ.get("OMOIDE_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KEYWORDS = ["type", "properties", "items", "prefixItems", "contains", "enum", "const", "required", "minimum",
            "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "format",
            "minItems", "maxItems", "uniqueItems", "additionalProperties", "anyOf", "oneOf", "allOf", "not",
            "$ref", "$defs", "if", "then", "else", "multipleOf", "default", "description", "title", "x-odd"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
schemas = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "array", "object",
                                                     "null", "bogus"])}),
    lambda children: st.dictionaries(st.sampled_from(KEYWORDS), children | json_values, max_size=5)
    | st.fixed_dictionaries({"type": st.just("object"),
                             "properties": st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=3)}),
    max_leaves=12)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly what the field should hold, sometimes anything at all."""
    return st.one_of(valid, valid, json_values)


names = st.lists(st.sampled_from(["jump", "duck", "x"]) | st.text(max_size=8), min_size=1, max_size=4)
DATA = {  # per command: the fields the spec gives it
    "startup": st.just({}),
    "context": st.fixed_dictionaries({"message": field(st.text(max_size=50)), "silent": field(st.booleans())}),
    "actions/register": st.fixed_dictionaries({"actions": field(st.lists(st.fixed_dictionaries(
        {"name": field(st.text(min_size=1, max_size=12)), "description": field(st.text(max_size=20)),
         "schema": field(schemas)}), max_size=4))}),
    "actions/unregister": st.fixed_dictionaries({"action_names": field(names)}),
    "actions/force": st.fixed_dictionaries(
        {"action_names": field(names), "query": field(st.text(max_size=30)), "state": field(st.text(max_size=30)),
         "priority": field(st.sampled_from(["low", "medium", "high", "critical"])),
         "ephemeral_context": field(st.booleans())}),
    "action/result": st.fixed_dictionaries({"id": field(st.sampled_from(["1", "2"])), "success": field(st.booleans()),
                                            "message": field(st.text(max_size=20))}),
    "shutdown/ready": st.just({}),
}
commands = st.sampled_from(sorted(DATA)).flatmap(
    lambda c: st.builds(lambda g, d: json.dumps({"command": c, "game": g, "data": d}),
                        field(st.sampled_from(["Attacker", "Other"])).filter(lambda g: g != "Game"),
                        field(DATA[c])))
frames = st.one_of(
    commands, commands, commands,
    st.builds(lambda m: json.dumps(m), json_values),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.integers(1, 200_000).map(lambda n: "[" * n),
    st.integers(1, 200_000).map(lambda n: '{"command":"context","game":"Game","data":{"message":"' + "x" * n + '"}}'),
)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def next_event(server: GameServer, it: Any) -> Any:
    async with asyncio.timeout(10):
        return await anext(it)


@FUZZ
@given(attack=st.lists(frames, min_size=1, max_size=4))
def test_no_game_frame_breaks_the_connection_or_the_server(attack):
    async def scenario() -> None:
        server = GameServer(FastClock(), port=0)
        await server.start()
        events = aiter(server)
        try:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}") as game, \
                    websockets.connect(f"ws://127.0.0.1:{server.port}", max_size=None) as attacker:
                await game.recv()  # actions/reregister_all
                await game.send(json.dumps({"command": "startup", "game": "Game"}))
                await game.send(json.dumps({"command": "actions/register", "game": "Game", "data": {"actions": [
                    {"name": "jump", "description": "Jump.", "schema": {"type": "object"}}]}}))
                await attacker.recv()
                for raw in attack:
                    await attacker.send(raw)
                # both connections carry on: a good message after the attack still arrives from each
                await attacker.send(json.dumps({"command": "context", "game": "A", "data": {"message": "attacker"}}))
                await game.send(json.dumps({"command": "context", "game": "Game", "data": {"message": "game"}}))
                seen: set[str] = set()
                while seen != {"attacker", "game"}:
                    event = await next_event(server, events)
                    assert event.kind in (InputKind.GAME_CONTEXT, InputKind.GAME_FORCE)
                    if event.text in ("attacker", "game"):
                        seen.add(event.text)
                assert [a.name for a in server.actions("Game", ["jump"])] == ["jump"]  # the other game lost nothing
        finally:
            await server.aclose()

    run(scenario())


@FUZZ
@given(schema=schemas)
def test_a_schema_is_refused_with_a_reason_or_becomes_a_grammar(schema):
    try:
        check_schema(schema)
    except ProtocolError as exc:
        assert str(exc)
        return
    try:
        grammar(tighten(schema))
    except SchemaError as exc:  # the engine says what it cannot do
        assert str(exc)


avatar_messages = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries({"type": st.sampled_from(["say", "control", "review", "x"]) | json_values,
                                                 "text": json_values, "command": json_values,
                                                 "request_id": json_values})),
    st.builds(json.dumps, json_values), st.text(max_size=100), st.binary(max_size=100),
    st.integers(1, 60_000).map(lambda n: "[" * n))


@FUZZ
@given(attack=st.lists(avatar_messages, min_size=1, max_size=4))
def test_no_avatar_channel_message_breaks_the_channel(attack):
    said: list[str] = []

    async def say(message: dict[str, Any]) -> dict[str, Any]:
        text = message.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError('needs "text", a non-empty string')
        said.append(text)
        return {"accepted": True}

    async def scenario() -> None:
        server = AvatarServer(port=0, commands={"say": say})
        await server.start()
        try:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}") as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                for raw in attack:
                    await ws.send(raw)
                await ws.send(json.dumps({"type": "say", "text": "ping", "request_id": "last"}))
                async with asyncio.timeout(10):
                    while True:
                        answer = json.loads(await ws.recv())
                        assert answer["type"] in ("say_result", "error")
                        if answer.get("request_id") == "last":
                            break
            assert said[-1] == "ping"
        finally:
            await server.aclose()

    run(scenario())


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


PNG = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b""))
CARD = {"spec": "chara_card_v2", "spec_version": "2.0",
        "data": {"name": "Fuzzy", "description": "A card.", "character_book": {"entries": [{"content": "lore"}]}}}


@FUZZ
@given(card=json_values | st.fixed_dictionaries({"spec": json_values, "data": json_values})
       | st.fixed_dictionaries({"spec": st.just("chara_card_v3"), "data": st.dictionaries(
           st.sampled_from(["name", "description", "first_mes", "mes_example", "character_book", "assets"]),
           json_values)})
       | st.fixed_dictionaries({"spec": st.just("chara_card_v2"), "data": st.fixed_dictionaries(
           {"name": st.just("F"), "character_book": st.fixed_dictionaries({"entries": st.lists(st.dictionaries(
               st.sampled_from(["keys", "secondary_keys", "content", "constant", "selective", "insertion_order",
                                "priority", "enabled", "use_regex", "case_sensitive", "extensions"]),
               json_values | st.lists(st.text(max_size=8), max_size=3)), max_size=3)})})})
       | st.dictionaries(st.sampled_from(["name", "bio", "lore", "messageExamples", "style", "adjectives",
                                          "topics", "system", "knowledge"]), json_values).map(lambda d: {"bio": "", **d}))
def test_a_card_loads_or_is_refused_naming_the_field(card):
    try:
        persona, lore = parse_card(card, "fuzz.json")
    except CardError as exc:
        assert str(exc).startswith("fuzz.json")
        return
    assert persona.name.strip() and all(isinstance(t, str) for t in lore)


@FUZZ
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4))
def test_a_damaged_png_card_is_refused_naming_the_file(cut, flips):
    raw = bytearray(png_with_card(PNG, CARD))
    for at, value in flips:
        if at < len(raw):
            raw[at] = value
    raw = raw[: max(len(raw) - cut, 0)]
    try:
        parse_card_bytes(bytes(raw), "fuzz.png")
    except CardError as exc:
        assert str(exc).startswith("fuzz.png")


def test_a_decompression_bomb_is_refused_without_inflating_it(tmp_path):
    bomb = zlib.compress(b"\0" * (MAX_TEXT_BYTES * 8), 9)  # 64 MB of zeros in a few dozen KB
    payload = b"chara\0\0" + bomb
    raw = PNG[:-12] + chunk(b"zTXt", payload) + PNG[-12:]
    (tmp_path / "bomb.png").write_bytes(raw)
    with pytest.raises(CardError, match="bomb.png: a compressed text chunk inflates past 8 MB"):
        load_card(tmp_path / "bomb.png")


def test_a_card_file_too_large_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(64 << 20)  # sparse: no disk used
    with pytest.raises(CardError, match="a card may be 32 MB at most"):
        load_card(big)


@FUZZ
@given(text=st.text(max_size=300) | st.builds(
    lambda section, key, value: f"[{section}]\n{key} = {value}\n",
    st.sampled_from(["model", "server", "avatar", "game", "tts", "memory", "learning", "learning.gate", "x"]),
    st.sampled_from(["id", "port", "temperature", "url", "token", "allowed_origins", "rate", "enabled", "x"]),
    st.sampled_from(["1", "-1", "1e999", '"x"', "[1, 2]", "{a = 1}", "true", '"http://a:1/v1"', "nan", '""'])))
def test_a_config_file_is_valid_or_one_line_names_the_key(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text)
    try:
        load(path, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)


@FUZZ
@given(env=st.dictionaries(
    st.builds(lambda a, b: f"OMOIDE_{a}__{b}", st.sampled_from(["MODEL", "SERVER", "AVATAR", "X", "LEARNING__GATE"]),
              st.sampled_from(["ID", "PORT", "TEMPERATURE", "URL", "RATE", "Y", "RECALL_MARGIN"])),
    st.text(max_size=20) | st.sampled_from(["[1", "{", "1e400", "-0", "true"]), max_size=3))
def test_environment_overrides_are_valid_or_one_line_names_the_variable(env):
    try:
        load(None, env=env)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)


@FUZZ
@given(event=st.fixed_dictionaries({
    "text": st.text(max_size=600), "bits": st.none() | st.integers(-5, 2**40),
    "badges": st.lists(st.fixed_dictionaries({"set_id": st.text(max_size=12), "id": st.text(max_size=5),
                                              "info": st.text(max_size=5)}), max_size=3),
    "name": st.text(min_size=1, max_size=30), "chatter": st.text(min_size=1, max_size=12)}))
def test_any_twitch_chat_event_becomes_one_input(event):

    async def scenario() -> None:
        events: list[Any] = []
        bot = TwitchEvents(FastClock(), events.append, client_id="fake", client_secret="fake", bot_id="2000")
        try:
            body = chat_event(event["text"], badges=[{**b} for b in event["badges"]], bits=event["bits"],
                              chatter=event["chatter"], name=event["name"])
            payload = create_event_instance("channel.chat.message", frame("channel.chat.message", body), http=bot._http)
            await bot.event_message(payload)
        finally:
            await bot.close()
        if event["chatter"] == "2000":
            assert events == []  # the bot's own line
        else:
            assert len(events) == 1 and events[0].text == event["text"]

    run(scenario())


def test_the_shipped_card_survives_a_round_trip_through_png(tmp_path):
    data = json.loads((Path(__file__).parent.parent / "persona_model/characters/komorebi.json").read_text())
    (tmp_path / "k.png").write_bytes(png_with_card(PNG, data, "ccv3"))
    assert load_card(tmp_path / "k.png")[0].name == "Komorebi"


def test_a_game_pattern_that_backtracks_for_ever_fails_the_match_instead_of_freezing():
    import jsonschema

    from persona_model.json_schema import validate

    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(x+x+)+y$"}}}
    with pytest.raises(jsonschema.ValidationError, match="took too long to match"):
        validate({"s": "x" * 5000}, schema)  # Python's re would backtrack for longer than the universe
    validate({"s": "xxy"}, schema)
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        validate({"s": "xz"}, schema)
