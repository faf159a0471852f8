"""The game API: the server side of the Neuro game SDK's WebSocket protocol (VedalAI/neuro-sdk,
API/SPECIFICATION.md), so games written with any of its SDKs connect to the character unchanged.

Games are clients; each text frame is `{"command", "game", "data"}`. State is kept per connection
and per game: registered actions, recent context, the force in flight and the ones queued behind
it, the action waiting for its result. What a game says becomes an InputEvent (a non-silent
`context` may get a reply; `actions/force` must get an action); the director acts through the
`Games` port (`actions`, `act`, `force_done`). Bad frames are answered with a log line, never by
dropping the connection or touching another game. Protocol and differences: docs/protocols/game-api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import jsonschema
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from plugins.guard import RateLimit, origin_ok, refuse, short, token_ok
from runtime.events import ActionResult, ActionSpec, InputEvent, InputKind, Priority
from runtime.ports import Clock

log = logging.getLogger(__name__)

# the keywords the spec marks as not supported well: refused at registration (under "properties"
# these are property names, which are fine)
UNSUPPORTED = frozenset(
    "$anchor $comment $defs $dynamicAnchor $dynamicRef $id $ref $schema $vocabulary additionalProperties allOf"
    " anyOf contentEncoding contentMediaType contentSchema dependentRequired dependentSchemas deprecated"
    " description else if maxProperties minProperties multipleOf not oneOf patternProperties readOnly then"
    " title unevaluatedItems unevaluatedProperties writeOnly".split())
PRIORITIES = {"low": Priority.NORMAL, "medium": Priority.NORMAL, "high": Priority.HIGH,
              "critical": Priority.CRITICAL}
MAX_FRAME = 1 << 20  # bytes: a bigger frame closes the connection (websockets' own limit)
MAX_DEPTH = 32  # nesting a schema may have
MAX_TEXT = 8000  # characters of a context message, query or state
MAX_GAMES = 8  # games one connection may speak for
MAX_ACTIONS = 256  # actions one game may have registered
MAX_QUEUED = 16  # forces waiting behind the one in flight, per game
UNAUTHORIZED = 4001  # close code for a missing or wrong token


class ProtocolError(ValueError):
    """A frame we cannot act on; the message names what was wrong."""


@dataclass(slots=True)
class Force:
    id: str
    game: str
    query: str
    state: str
    action_names: tuple[str, ...]
    priority: str
    ephemeral: bool


@dataclass(eq=False)
class _Game:
    name: str
    conn: _Connection
    actions: dict[str, ActionSpec] = field(default_factory=dict)
    context: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    force: Force | None = None  # in flight: handed to the director, not yet done
    queued: deque[Force] = field(default_factory=deque)


@dataclass(eq=False)
class _Connection:
    ws: ServerConnection
    name: str
    games: dict[str, _Game] = field(default_factory=dict)
    waiting: dict[str, tuple[str, asyncio.Future[ActionResult]]] = field(default_factory=dict)  # id -> game


def check_schema(schema: Any, where: str = "schema", depth: int = 0) -> None:
    """Raise ProtocolError for what the spec does not support: a top level that is not an object,
    an unsupported keyword (property names are fine), or absurd nesting."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(schema, dict):
        raise ProtocolError(f"{where}: must be a JSON object, not {type(schema).__name__}")
    if depth == 0 and schema and schema.get("type") != "object":
        raise ProtocolError(f'{where}: the top level must have "type": "object"')
    for key, value in schema.items():
        if key in UNSUPPORTED:
            raise ProtocolError(f"{where}: the keyword {key!r} is not supported by the Neuro game API")
        if key == "properties":
            if not isinstance(value, dict):
                raise ProtocolError(f"{where}.properties: must be an object")
            for name, sub in value.items():
                check_schema(sub, f"{where}.properties.{name}", depth + 1)
        elif key in ("items", "prefixItems", "contains"):
            for i, sub in enumerate(value if isinstance(value, list) else [value]):
                check_schema(sub, f"{where}.{key}" + (f"[{i}]" if isinstance(value, list) else ""), depth + 1)


def _action(raw: Any, game: str) -> ActionSpec:
    if not isinstance(raw, dict):
        raise ProtocolError("an action must be an object with name, description and schema")
    name, description, schema = raw.get("name"), raw.get("description", ""), raw.get("schema")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ProtocolError("an action needs a name (a non-empty string of at most 100 characters)")
    if not isinstance(description, str):
        raise ProtocolError(f"action {name!r}: description must be a string")
    if schema is not None:
        check_schema(schema, f"action {name!r} schema")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ProtocolError(f"action {name!r} schema is not a valid JSON schema: {exc.message[:200]}") from None
    return ActionSpec(name, description, schema or None)


def _text(data: dict[str, Any], key: str, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(f"data.{key} must be a string" + ("" if required else " when given"))
    if len(value) > MAX_TEXT:
        raise ProtocolError(f"data.{key} is {len(value)} characters long; at most {MAX_TEXT}")
    return value


class GameServer:
    """Implements the Source port (what games say) and the Games port (acting in them)."""

    name = "games"

    def __init__(self, clock: Clock, host: str = "127.0.0.1", port: int = 8000, *, token: str = "",
                 result_timeout_s: float = 30.0, character: str = "Omoide", queue_size: int = 256,
                 allowed_origins: Sequence[str] = (), rate: float = 50.0, burst: int = 200) -> None:
        self.clock = clock
        self.host = host
        self.requested_port = port
        self.token = token
        self.allowed_origins = tuple(allowed_origins)  # web pages (browser games) that may connect
        self.rate, self.burst = rate, burst  # messages a second per connection, and the burst allowed
        self.result_timeout_s = result_timeout_s
        self.character = character
        self._server: Server | None = None
        self._events: asyncio.Queue[InputEvent | None] = asyncio.Queue(queue_size)
        self._games: dict[str, _Game] = {}  # by game name: the connection that speaks for it now
        self._forces: dict[str, Force] = {}
        self._ids = itertools.count(1)
        self.errors = 0  # protocol errors seen (bad frames), for tests and logs

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await serve(self._handle, self.host, self.requested_port, max_size=MAX_FRAME,
                                   compression=None, process_request=self._handshake)
        log.info("game API listening", extra={"url": f"ws://{self.host}:{self.port}"})

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[InputEvent]:  # type: ignore[override]
        while (event := await self._events.get()) is not None:
            yield event

    # ---- the Games port ----------------------------------------------------------------------
    def actions(self, game: str, names: Sequence[str]) -> list[ActionSpec]:
        g = self._games.get(game)
        if g is None:
            return []
        return [g.actions[n] for n in names if n in g.actions]

    def context(self, game: str) -> list[str]:
        g = self._games.get(game)
        return list(g.context) if g is not None else []

    async def act(self, game: str, name: str, data: str | None) -> ActionResult:
        g = self._games.get(game)
        if g is None or name not in g.actions:
            return ActionResult(False, f"{game!r} has no action {name!r} now")
        action_id = str(next(self._ids))
        future: asyncio.Future[ActionResult] = asyncio.get_running_loop().create_future()
        g.conn.waiting[action_id] = (game, future)
        payload: dict[str, Any] = {"id": action_id, "name": name}
        if data is not None and g.actions[name].schema:
            payload["data"] = data  # a JSON-encoded string, as the spec has it
        try:
            await self._send(g.conn, "action", payload)
            async with asyncio.timeout(self.result_timeout_s):  # not wait_for: 3.11's can swallow a cancel
                return await future
        except (ConnectionClosed, OSError):
            return ActionResult(False, f"{game!r} disconnected")
        except TimeoutError:
            return ActionResult(False, f"{game!r} sent no result in {self.result_timeout_s:g} s")
        finally:
            g.conn.waiting.pop(action_id, None)

    def force_done(self, force_id: str, acted: bool) -> None:
        force = self._forces.get(force_id)
        if force is None:
            return
        g = self._games.get(force.game)
        if g is None or g.force is not force:
            self._forces.pop(force_id, None)
            return
        if not acted and self.actions(force.game, force.action_names):
            self._emit_force(force)  # cut short (e.g. preempted): asked again
            return
        self._forces.pop(force_id, None)
        g.force = None
        if force.ephemeral:
            with contextlib.suppress(ValueError):
                g.context.remove(_state_line(force))
        self._next_force(g)

    def pending(self, force_id: str) -> bool:
        return force_id in self._forces

    # ---- connections -------------------------------------------------------------------------
    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        """A web page that is not allowed (its Origin) is refused before the WebSocket opens."""
        if not origin_ok(request, self.allowed_origins, self.port):
            log.warning("game connection refused: a web page not in game.allowed_origins",
                        extra={"origin": short(request.headers.get("Origin"))})
            return refuse(HTTPStatus.FORBIDDEN, "this page's origin is not in game.allowed_origins")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        if not token_ok(ws.request, self.token):
            log.warning("game connection refused: wrong or missing token", extra={"peer": str(ws.remote_address)})
            await ws.close(UNAUTHORIZED, "unauthorized: add ?token=... to NEURO_SDK_WS_URL")
            return
        conn = _Connection(ws, str(ws.remote_address))
        log.info("game connected", extra={"peer": conn.name})
        limit = RateLimit(self.rate, self.burst)
        try:
            await self._send(conn, "actions/reregister_all", None)
            async for raw in ws:
                try:
                    if not limit.allow():
                        if limit.refused % 100 != 1:  # said once per hundred, not per message
                            continue
                        raise ProtocolError(f"more than {self.rate:g} messages a second: dropped"
                                            f" ({limit.refused} so far)")
                    await self._frame(conn, raw)
                except ProtocolError as exc:
                    self.errors += 1
                    log.error("bad message from a game", extra={"peer": conn.name, "error": str(exc)})
        except ConnectionClosed:
            pass
        finally:
            self._disconnected(conn)

    def _disconnected(self, conn: _Connection) -> None:
        for _, future in conn.waiting.values():
            if not future.done():
                future.set_result(ActionResult(False, "the game disconnected"))
        for name, g in conn.games.items():
            if self._games.get(name) is g:
                del self._games[name]
                self._drop_forces(g)
        log.info("game disconnected", extra={"peer": conn.name, "games": sorted(conn.games)})

    async def _send(self, conn: _Connection, command: str, data: dict[str, Any] | None) -> None:
        frame: dict[str, Any] = {"command": command}
        if data is not None:
            frame["data"] = data
        await conn.ws.send(json.dumps(frame, ensure_ascii=False))

    async def _frame(self, conn: _Connection, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            raise ProtocolError("binary frame: the game API takes text frames of JSON")
        try:
            message = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError(f"not JSON ({exc})") from None
        except RecursionError:
            raise ProtocolError("JSON nested too deeply") from None
        if not isinstance(message, dict):
            raise ProtocolError("a message must be a JSON object with command, game and data")
        command, game, data = message.get("command"), message.get("game"), message.get("data", {})
        if not isinstance(command, str):
            raise ProtocolError("missing command")
        command = command[:64]
        if not isinstance(game, str) or not game.strip() or len(game) > 200:
            raise ProtocolError(f"{command}: missing game (the game's display name, at most 200 characters)")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ProtocolError(f"{command}: data must be an object")
        handler = _HANDLERS.get(command)
        if handler is None:
            raise ProtocolError(f"unknown command {command!r} from {short(game)}")
        await handler(self, conn, game, data)

    def _game(self, conn: _Connection, game: str, startup: bool = False) -> _Game:
        """The game as this connection speaks for it. Another connection takes a game over only by
        sending its `startup` (a game that restarted); anything else for it is refused."""
        owner = self._games.get(game)
        if owner is not None and owner.conn is not conn and not startup:
            raise ProtocolError(f"{game!r} is connected on another connection; a game that restarted"
                                " sends startup first")
        g = conn.games.get(game)
        if g is None:
            if len(conn.games) >= MAX_GAMES:
                raise ProtocolError(f"one connection may speak for at most {MAX_GAMES} games")
            g = conn.games[game] = _Game(game, conn)
        if self._games.get(game) is not g:
            previous = self._games.get(game)
            if previous is not None:  # the same game from a new connection: it speaks for it now
                self._drop_forces(previous)
            self._games[game] = g
        return g

    def _drop_forces(self, g: _Game) -> None:
        """Forget a game's force in flight and the queued ones (its actions or connection are gone)."""
        for force in [g.force, *g.queued]:
            if force is not None:
                self._forces.pop(force.id, None)

    # ---- commands from games -----------------------------------------------------------------
    async def _startup(self, conn: _Connection, game: str, data: dict[str, Any]) -> None:
        g = self._game(conn, game, startup=True)
        g.actions.clear()
        self._drop_forces(g)
        g.force, g.queued = None, deque()
        log.info("game started", extra={"game": game})
        await self._send(conn, "startup", {"session": {"sessionId": f"{id(conn):x}", "characterId": "omoide",
                                                      "displayName": self.character}})

    async def _context(self, conn: _Connection, game: str, data: dict[str, Any]) -> None:
        message = _text(data, "message")
        silent = data.get("silent", False)
        if not isinstance(silent, bool):
            raise ProtocolError("context: data.silent must be true or false")
        g = self._game(conn, game)
        g.context.append(message)
        self._put(InputEvent(InputKind.GAME_CONTEXT, message, f"game:{game}", self.clock.now(), game,
                             Priority.LOW, meta={"game": game, "silent": silent}))

    async def _register(self, conn: _Connection, game: str, data: dict[str, Any]) -> None:
        raw = data.get("actions")
        if not isinstance(raw, list):
            raise ProtocolError("actions/register: data.actions must be a list")
        g = self._game(conn, game)
        problems = []
        for item in raw:
            try:
                spec = _action(item, game)
            except ProtocolError as exc:
                problems.append(str(exc))
                continue
            if spec.name not in g.actions:  # re-registering a name is ignored, as the spec says
                if len(g.actions) >= MAX_ACTIONS:
                    problems.append(f"more than {MAX_ACTIONS} actions")
                    break
                g.actions[spec.name] = spec
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ProtocolError(f"actions/register from {game!r}: refused " + "; ".join(problems[:5]) + more)

    async def _unregister(self, conn: _Connection, game: str, data: dict[str, Any]) -> None:
        names = data.get("action_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError("actions/unregister: data.action_names must be a list of strings")
        g = self._game(conn, game)
        for name in names:
            g.actions.pop(name, None)

    async def _force(self, conn: _Connection, game: str, data: dict[str, Any]) -> None:
        names = data.get("action_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ProtocolError("actions/force: data.action_names must be a non-empty list of strings")
        priority = data.get("priority", "low")
        if not isinstance(priority, str) or priority not in PRIORITIES:
            raise ProtocolError(f"actions/force: priority must be low, medium, high or critical, not {short(priority)}")
        ephemeral = data.get("ephemeral_context", False)
        if not isinstance(ephemeral, bool):
            raise ProtocolError("actions/force: data.ephemeral_context must be true or false")
        force = Force(f"force-{next(self._ids)}", game, _text(data, "query"), _text(data, "state", required=False),
                      tuple(names), priority, ephemeral)
        g = self._game(conn, game)
        unknown = [n for n in names if n not in g.actions]
        if len(unknown) == len(names):
            raise ProtocolError(f"actions/force from {game!r}: none of {short(names)} is registered")
        self._forces[force.id] = force
        if g.force is None:
            g.force = force
            if force.state and not force.ephemeral:
                g.context.append(_state_line(force))
            self._emit_force(force)
        elif len(g.queued) >= MAX_QUEUED:
            self._forces.pop(force.id, None)
            raise ProtocolError(f"actions/force from {game!r}: {MAX_QUEUED} forces are already waiting")
        else:  # one force in flight per game: the rest wait their turn
            g.queued.append(force)

    async def _result(self, conn: _Connection, game: str, data: dict[str, Any]) -> None:
        action_id = data.get("id")
        success = data.get("success")
        message = data.get("message", "")
        if not isinstance(action_id, str) or not isinstance(success, bool):
            raise ProtocolError("action/result: needs data.id (string) and data.success (true or false)")
        waiting = conn.waiting.get(action_id)
        if waiting is None:
            raise ProtocolError(f"action/result from {game!r} for an unknown action id {short(action_id)}")
        _, future = waiting
        if not future.done():
            future.set_result(ActionResult(success, message if isinstance(message, str) else str(message)))

    async def _shutdown_ready(self, conn: _Connection, game: str, data: dict[str, Any]) -> None:
        log.info("game ready to shut down", extra={"game": game})

    # ---- forces ------------------------------------------------------------------------------
    def _emit_force(self, force: Force) -> None:
        text = (f"{force.state}\n\n{force.query}" if force.state else force.query).strip()
        self._put(InputEvent(InputKind.GAME_FORCE, text, f"game:{force.game}", self.clock.now(), force.game,
                             PRIORITIES[force.priority],
                             meta={"game": force.game, "force_id": force.id, "query": force.query,
                                   "state": force.state, "action_names": list(force.action_names),
                                   "priority": force.priority}))

    def _next_force(self, g: _Game) -> None:
        while g.queued and g.force is None:
            force = g.queued.popleft()
            if self.actions(g.name, force.action_names):
                g.force = force
                if force.state and not force.ephemeral:
                    g.context.append(_state_line(force))
                self._emit_force(force)
            else:  # its actions are gone: the game moved on
                self._forces.pop(force.id, None)

    def _put(self, event: InputEvent) -> None:
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("game input dropped: the character is far behind", extra={"game": event.author})

    async def shutdown(self, game: str, graceful: bool = True, wants: bool = True) -> bool:
        """Ask a game to shut down (the proposed shutdown/graceful or shutdown/immediate)."""
        g = self._games.get(game)
        if g is None:
            return False
        if graceful:
            await self._send(g.conn, "shutdown/graceful", {"wants_shutdown": wants})
        else:
            await self._send(g.conn, "shutdown/immediate", None)
        return True


def _state_line(force: Force) -> str:
    return f"State: {force.state}"


_HANDLERS = {
    "startup": GameServer._startup,
    "context": GameServer._context,
    "actions/register": GameServer._register,
    "actions/unregister": GameServer._unregister,
    "actions/force": GameServer._force,
    "action/result": GameServer._result,
    "shutdown/ready": GameServer._shutdown_ready,
}
