"""The game API over real sockets: the Neuro game SDK's protocol served by the running character,
games as WebSocket clients (our SDK, a raw client, and the third-party `neuro-api` package), the
tiny model choosing every action under its schema's grammar."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio
import trio_websocket
import websockets
from neuro_api.command import Action
from neuro_api.trio_ws import TrioNeuroAPI
from omoide_game.tictactoe import TicTacToe

from plugins.game_neuro import ProtocolError, check_schema
from runtime.app import play
from runtime.config import load
from runtime.events import InputEvent, InputKind, Prompt, PromptContext, TurnStatus
from tests.conftest import FastClock, running, write_config
from tests.fakes import ScriptedModel
from tests.harness import until

pytestmark = pytest.mark.model

MOVE = {"type": "object", "properties": {"cell": {"type": "integer", "minimum": 0, "maximum": 8},
                                         "title": {"type": "string", "enum": ["a", "b"]}},
        "required": ["cell", "title"]}  # a property named "title" is fine; the keyword is not


def game_config(tmp_path: Path, **game: Any) -> Path:
    return write_config(tmp_path, game={"enabled": True, "port": 0, "speak": False, **game},
                        model={"max_new_tokens": 12})


class RawGame:
    """A game client speaking the protocol by hand over a real WebSocket, keeping every frame."""

    def __init__(self, ws: Any, name: str) -> None:
        self.ws = ws
        self.name = name
        self.frames: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read(), name="raw-game-read")

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.frames.append(json.loads(raw))

    async def send(self, command: str, data: Any = None, game: Any = ...) -> None:
        frame: dict[str, Any] = {"command": command, "game": self.name if game is ... else game}
        if data is not None:
            frame["data"] = data
        await self.ws.send(json.dumps(frame))

    async def expect(self, command: str, timeout: float = 60.0, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.frames[after:]:
                if frame["command"] == command:
                    return frame
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {command!r} within {timeout}s; got {[f['command'] for f in self.frames]}")

    def count(self, command: str) -> int:
        return sum(f["command"] == command for f in self.frames)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


@contextlib.asynccontextmanager
async def raw_game(app: Any, name: str) -> AsyncIterator[RawGame]:
    ws = await websockets.connect(f"ws://127.0.0.1:{app.games.port}")
    game = RawGame(ws, name)
    try:
        await game.expect("actions/reregister_all", 10)  # sent on every connect
        await game.send("startup")
        await game.expect("startup", 10)
        yield game
    finally:
        await game.close()




def test_schema_checks_refuse_unsupported_keywords_but_not_property_names():
    check_schema(MOVE)
    check_schema({})
    for bad, why in (({"type": "string"}, "top level"), ({"type": "object", "additionalProperties": False}, "additionalProperties"),
                     ({"type": "object", "properties": {"a": {"type": "array", "items": {"oneOf": []}}}}, "oneOf"),
                     ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "$ref")):
        with pytest.raises(ProtocolError, match=why.replace("$", r"\$")):
            check_schema(bad)


def test_the_sdk_is_a_distribution_of_its_own_that_needs_no_model(tmp_path):
    sdk = shutil.copytree(Path(__file__).parents[1] / "plugins" / "game_sdk", tmp_path / "sdk")  # built apart
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(sdk)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("omoide_game_sdk-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"omoide_game"}
    requires = sorted(re.match(r"Requires-Dist: *([A-Za-z0-9_.-]+)", line).group(1)  # type: ignore[union-attr]
                      for line in meta.splitlines() if line.startswith("Requires-Dist:"))
    assert requires == ["jsonschema", "websockets"]
    # what a game developer's process loads: the SDK and its example game, none of Omoide or torch
    loaded = subprocess.run([sys.executable, "-c", "import sys, omoide_game, omoide_game.tictactoe; "
                             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"],
                            check=True, capture_output=True, text=True).stdout.split()
    assert not {"torch", "transformers", "numpy", "runtime", "persona_model", "memory", "plugins"} & set(loaded)


async def test_the_example_game_is_played_to_the_end_with_every_move_valid(tmp_path, tiny_model):
    config = write_config(tmp_path, game={"enabled": True, "port": 0}, model={"max_new_tokens": 12})
    async with running(config, tiny_model, 50) as (app, records):
        game = TicTacToe(f"ws://127.0.0.1:{app.games.port}", seed=0)
        winner = await asyncio.wait_for(game.run(), 240)
        await until(lambda: not app.director.busy)
        await app.memory.flush()
    xs = [cell for who, cell in game.moves if who == "X"]
    assert winner in ("X", "O", "draw") and len(set(c for _, c in game.moves)) == len(game.moves)
    acted = [r for r in records if r.actions]
    assert [a["success"] for r in acted for a in r.actions] == [True] * len(xs)  # never refused: schema-valid
    assert [json.loads(r.actions[0]["data"])["cell"] for r in acted] == xs
    assert all(r.spoken_text for r in acted)  # and it talked about each move
    rows = sqlite3.connect(tmp_path / "omoide.db").execute(
        "SELECT actions FROM turns WHERE actions != '[]' ORDER BY started_at").fetchall()
    assert [json.loads(a)[0]["name"] for (a,) in rows] == ["play"] * len(xs)  # logged for training
    kinds = [k for (k,) in sqlite3.connect(tmp_path / "omoide.db").execute("SELECT kind FROM inputs")]
    assert kinds.count("game_force") == len(xs) and kinds.count("game_context") == 2


async def test_omoide_play_says_who_plays_which_side_and_plays_to_the_end(tmp_path, tiny_model):
    config = load(write_config(tmp_path, game={"enabled": True, "port": 0}, model={"max_new_tokens": 12}), env={})
    shown: list[str] = []
    winner = await asyncio.wait_for(play(config, seed=1, show=shown.append, opponent="random", model=tiny_model,
                                         clock=FastClock(50)), 240)
    assert shown[0] == "Testa plays X and moves first; the opponent plays O (at random)"
    assert winner in ("X", "O", "draw") and any("X plays" in line for line in shown)


async def test_every_message_in_both_directions(tmp_path, tiny_model):
    async with running(game_config(tmp_path), tiny_model, 50) as (app, records), raw_game(app, "Probe") as g:
        ack = await g.expect("startup")
        assert ack["data"]["session"]["displayName"] == "Testa"
        await g.send("actions/register", {"actions": [
            {"name": "move", "description": "Move to a cell", "schema": MOVE},
            {"name": "pass", "description": "Do nothing this turn"}]})
        await g.send("context", {"message": "The board is empty.", "silent": True})
        await g.send("context", {"message": "Your opponent waves at you!", "silent": False})
        await until(lambda: len(records) == 1)  # only the non-silent one is answered
        assert records[0].inputs[0].text == "Your opponent waves at you!" and records[0].spoken_text

        await g.send("actions/force", {"state": "empty board", "query": "Move or pass.", "action_names": ["move", "pass"],
                                       "ephemeral_context": False, "priority": "high"})
        action = (await g.expect("action"))["data"]
        assert isinstance(action["id"], str) and action["name"] in ("move", "pass")
        if action["name"] == "move":
            jsonschema.validate(json.loads(action["data"]), MOVE)  # data: a JSON-encoded string
        else:
            assert "data" not in action  # no schema, no data
        await g.send("action/result", {"id": action["id"], "success": True, "message": "done"})
        await until(lambda: len(records) == 2)
        assert records[1].actions[0]["message"] == "done" and records[1].actions[0]["success"]
        assert app.games.context("Probe")[:2] == ["The board is empty.", "Your opponent waves at you!"]

        await g.send("actions/unregister", {"action_names": ["pass", "never-registered"]})
        await until(lambda: app.games.actions("Probe", ["move", "pass"]) != [] and
                    [a.name for a in app.games.actions("Probe", ["move", "pass"])] == ["move"])
        async with websockets.connect(f"ws://127.0.0.1:{app.avatar.port}/?control={app.avatar.control_token}"
                                      ) as panel:  # the operator's control panel
            async def command(message: dict[str, Any]) -> dict[str, Any]:
                await panel.send(json.dumps(message))
                while (answer := json.loads(await panel.recv()))["type"] in ("hello", "turn_start", "sentence",
                                                                            "audio", "expression", "turn_end"):
                    pass
                return answer

            assert (await command({"type": "game_shutdown", "game": "Probe"}))["type"] == "game_shutdown_result"
            assert (await g.expect("shutdown/graceful"))["data"] == {"wants_shutdown": True}
            await g.send("shutdown/ready")
            await command({"type": "game_shutdown", "game": "Probe", "immediate": True})
            await g.expect("shutdown/immediate")
            missing = await command({"type": "game_shutdown", "game": "Nope"})
            assert missing["type"] == "error" and "no game 'Nope'" in missing["message"]
        await asyncio.sleep(0.1)
        assert app.games.errors == 0
        await app.memory.flush()
    logged = sqlite3.connect(tmp_path / "omoide.db").execute(
        "SELECT text, meta FROM inputs WHERE kind = 'game_context' ORDER BY logged_at").fetchall()
    assert [t for t, _ in logged] == ["The board is empty.", "Your opponent waves at you!"]  # silent ones too


async def test_a_refused_action_makes_the_character_try_the_force_again(tmp_path, tiny_model):
    async with running(game_config(tmp_path), tiny_model, 50) as (app, records), raw_game(app, "Picky") as g:
        await g.send("actions/register", {"actions": [{"name": "move", "description": "Move", "schema": MOVE}]})
        await g.send("actions/force", {"query": "Move!", "action_names": ["move"]})
        first = (await g.expect("action"))["data"]
        await g.send("action/result", {"id": first["id"], "success": False, "message": "That cell is taken."})
        await until(lambda: g.count("action") == 2)
        second = [f for f in g.frames if f["command"] == "action"][1]["data"]
        assert second["id"] != first["id"]
        await g.send("action/result", {"id": second["id"], "success": True})
        await until(lambda: len(records) == 1)
    assert [a["success"] for a in records[0].actions] == [False, True]
    assert records[0].actions[0]["message"] == "That cell is taken."


async def test_one_force_at_a_time_per_game_the_rest_queued(tmp_path, tiny_model):
    async with running(game_config(tmp_path), tiny_model, 50) as (app, records), raw_game(app, "Queue") as g:
        await g.send("actions/register", {"actions": [{"name": "a", "description": "A"}, {"name": "b", "description": "B"}]})
        await g.send("actions/force", {"query": "First: do a", "action_names": ["a"]})
        await g.send("actions/force", {"query": "Second: do b", "action_names": ["b"]})
        first = (await g.expect("action"))["data"]
        await asyncio.sleep(1.0)
        assert g.count("action") == 1  # the second waits until the first has its result
        await g.send("action/result", {"id": first["id"], "success": True})
        await until(lambda: g.count("action") == 2)
        second = [f for f in g.frames if f["command"] == "action"][1]["data"]
        assert (first["name"], second["name"]) == ("a", "b")
        await g.send("action/result", {"id": second["id"], "success": True})
        await until(lambda: len(records) == 2)


class SlowTalker(ScriptedModel):
    """Talks slowly (a long scripted reply) but chooses actions with the real tiny model."""

    def __init__(self, text: str, chooser: Any) -> None:
        super().__init__(text, delay=0.05)
        self.chooser = chooser

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        return await self.chooser.json(prompt, schema, max_new_tokens)

    def render(self, context: PromptContext) -> Prompt:
        return self.chooser.render(context) if context.inputs[0].kind is InputKind.GAME_FORCE else super().render(context)

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        async for piece in super().stream(prompt):
            yield piece


LONG = " ".join(f"This is sentence number {i} of a long story." for i in range(12))


async def test_a_critical_force_interrupts_the_reply_and_a_low_one_waits(tmp_path, tiny_model):
    async with running(game_config(tmp_path), SlowTalker(LONG, tiny_model), 5) as (app, records), \
            raw_game(app, "Urgent") as g:
        await g.send("actions/register", {"actions": [{"name": "dodge", "description": "Dodge the attack"}]})
        app.director.submit(InputEvent(InputKind.CHAT, "tell me a story", "test", app.director.cast.clock.now(), "viewer"))
        await until(lambda: app.director.current is not None)
        await asyncio.sleep(0.3)
        await g.send("actions/force", {"query": "An attack! Dodge!", "action_names": ["dodge"], "priority": "critical"})
        action = (await g.expect("action", 30))["data"]
        await g.send("action/result", {"id": action["id"], "success": True})
        await until(lambda: len(records) == 2)
        assert records[0].status is TurnStatus.INTERRUPTED and records[0].interrupt_reason == "preempted"
        assert records[1].actions[0]["name"] == "dodge"

        app.director.submit(InputEvent(InputKind.CHAT, "another story", "test", app.director.cast.clock.now(), "viewer"))
        await until(lambda: app.director.current is not None and app.director.current.inputs[0].kind is InputKind.CHAT)
        await g.send("actions/force", {"query": "Your turn, no hurry.", "action_names": ["dodge"], "priority": "low"})
        second = (await g.expect("action", 120, after=len(g.frames)))["data"]
        assert records[2].status is TurnStatus.COMPLETE  # the story was finished first
        await g.send("action/result", {"id": second["id"], "success": True})
        await until(lambda: len(records) == 4)


async def test_startup_clears_the_games_actions(tmp_path, tiny_model):
    async with running(game_config(tmp_path), tiny_model, 50) as (app, records), raw_game(app, "Reset") as g:
        await g.send("actions/register", {"actions": [{"name": "old", "description": "Old"}]})
        await until(lambda: bool(app.games.actions("Reset", ["old"])))
        await g.send("startup")
        await g.send("actions/force", {"query": "Do the old thing", "action_names": ["old"]})
        await until(lambda: app.games.errors == 1)  # none of its actions is registered any more
        assert g.count("action") == 0
        await g.send("actions/register", {"actions": [{"name": "new", "description": "New"}]})
        await g.send("actions/force", {"query": "Do the new thing", "action_names": ["new"]})
        assert (await g.expect("action"))["data"]["name"] == "new"


async def test_bad_input_is_named_and_the_connection_and_other_games_carry_on(tmp_path, tiny_model, caplog):
    async with running(game_config(tmp_path), tiny_model, 50) as (app, records), raw_game(app, "Broken") as bad, \
            raw_game(app, "Fine") as good:
        await good.send("actions/register", {"actions": [{"name": "go", "description": "Go"}]})
        await bad.ws.send("{not json")
        await bad.ws.send(b"\x00\x01binary")
        await bad.ws.send(json.dumps([1, 2]))
        await bad.send("dance", {})
        await bad.send("context", {"message": "hi"}, game=None)
        await bad.send("context", {"silent": True})
        await bad.send("context", ["not", "an", "object"])
        await bad.send("actions/register", {"actions": [
            {"name": "sneaky", "description": "x", "schema": {"type": "object", "additionalProperties": False}},
            {"name": "fine", "description": "ok", "schema": MOVE}, {"description": "no name"}]})
        await bad.send("action/result", {"id": "999", "success": True})
        await bad.send("actions/force", {"query": "q", "action_names": ["fine"], "priority": "urgent"})
        await until(lambda: app.games.errors == 10)
        messages = " | ".join(r.getMessage() + str(getattr(r, "error", "")) for r in caplog.records)
        for named in ("not JSON", "binary frame", "unknown command 'dance'", "missing game", "data.message",
                      "data must be an object", "'additionalProperties' is not supported", "an action needs a name",
                      "unknown action id '999'", "priority must be"):
            assert named in messages, named
        assert [a.name for a in app.games.actions("Broken", ["sneaky", "fine"])] == ["fine"]

        # the same connection still works, and so does the other game
        await bad.send("actions/force", {"query": "Now move", "action_names": ["fine"]})
        action = (await bad.expect("action"))["data"]
        jsonschema.validate(json.loads(action["data"]), MOVE)
        await bad.send("action/result", {"id": action["id"], "success": True})
        await good.send("actions/force", {"query": "Go!", "action_names": ["go"]})
        action = (await good.expect("action"))["data"]
        await good.send("action/result", {"id": action["id"], "success": True})
        await until(lambda: len(records) == 2)

        # a game that disconnects mid-force: the turn ends, the character goes on
        async with raw_game(app, "Flaky") as flaky:
            await flaky.send("actions/register", {"actions": [{"name": "jump", "description": "Jump"}]})
            await flaky.send("actions/force", {"query": "Jump!", "action_names": ["jump"]})
            await flaky.expect("action")
        await until(lambda: len(records) == 3)
        assert records[2].actions[0]["success"] is False and "disconnected" in records[2].actions[0]["message"]
        seen = len(good.frames)
        await good.send("actions/force", {"query": "Go again!", "action_names": ["go"]})
        action = (await good.expect("action", after=seen))["data"]
        await good.send("action/result", {"id": action["id"], "success": True})
        await until(lambda: len(records) == 4)


async def test_a_token_keeps_other_clients_out(tmp_path, tiny_model):
    async with running(game_config(tmp_path, token="s3cret"), tiny_model, 50) as (app, _):
        url = f"ws://127.0.0.1:{app.games.port}"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with websockets.connect(url) as ws:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        async with websockets.connect(f"{url}/?token=s3cret") as ws:
            assert json.loads(await ws.recv())["command"] == "actions/reregister_all"




def neuro_api_game(url: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A game written with the third-party `neuro-api` package (trio), run in its own thread."""
    seen: dict[str, Any] = {}

    class Probe(TrioNeuroAPI):  # type: ignore[misc]
        async def handle_startup_acknowledgement(self, ack: Any) -> None:
            seen["ack"] = ack

        async def handle_action(self, action: Any) -> None:
            seen["action"] = (action.name, action.data)
            await self.send_action_result(action.id_, True, "played")

    async def main() -> None:
        async with trio_websocket.open_websocket_url(url) as ws:
            game = Probe("Probe Card Game", ws)
            await game.send_startup_command()
            await game.register_actions([Action("pick_card", "Pick a card from your hand", schema)])
            await game.send_context("You hold an ace and a king.", silent=True)
            await game.send_force_action("hand: ace, king", "Pick a card now", ["pick_card"])
            with trio.fail_after(120):
                while "action" not in seen:
                    await game.read_message()

    trio.run(main)
    return seen


async def test_a_game_written_with_the_neuro_api_package_plays_with_us(tmp_path, tiny_model):
    schema = {"type": "object", "properties": {"card": {"type": "string", "enum": ["ace", "king"]}},
              "required": ["card"]}
    async with running(game_config(tmp_path), tiny_model, 50) as (app, records):
        seen = await asyncio.to_thread(neuro_api_game, f"ws://127.0.0.1:{app.games.port}", schema)
        await until(lambda: len(records) == 1)
    name, data = seen["action"]
    assert name == "pick_card"
    jsonschema.validate(json.loads(data), schema)
    assert records[0].actions[0]["success"] and records[0].actions[0]["message"] == "played"
    assert app.games.errors == 0
