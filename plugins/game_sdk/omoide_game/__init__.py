"""A small asyncio SDK for game authors: the game side of the Neuro game API, for Omoide or any
server of the same protocol (docs/protocols/game-api.md).

    game = Game("Tic Tac Toe")               # URL from NEURO_SDK_WS_URL, like the official SDKs

    @game.action("play", "Put your mark in a free cell", {"type": "object", "properties": {...}})
    async def play(data):
        ...                                  # return a message, or raise Refused("why") to have it retried
        return "placed"

    async with game:                         # connect, startup, register the actions
        await game.context("The board is empty.", silent=True)
        await game.force("Your move!", ["play"], state=board())
        await game.run()                     # answer actions until game.stop()

Incoming action data is checked against the action's schema before the handler sees it; a handler
that raises `Refused` (or any error) answers `success: false`, which makes the character try the
force again; a handler that returns answers `success: true` with what it returned as the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://localhost:8000"
Handler = Callable[[Any], Awaitable[str | None]]


class Refused(Exception):
    """Raised by a handler: the action cannot be done (the message says why); it is retried."""


@dataclass(slots=True)
class _Action:
    name: str
    description: str
    schema: dict[str, Any] | None
    handler: Handler

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.schema:
            out["schema"] = self.schema
        return out


class Game:
    def __init__(self, name: str, url: str | None = None) -> None:
        self.name = name
        self.url = url or os.environ.get("NEURO_SDK_WS_URL") or DEFAULT_URL
        self.actions: dict[str, _Action] = {}
        self.session: dict[str, Any] | None = None  # the server's startup acknowledgement, if any
        self.on_shutdown: Callable[[bool], Awaitable[None]] | None = None
        self._ws: ClientConnection | None = None
        self._stop = asyncio.Event()

    # ---- actions -----------------------------------------------------------------------------
    def action(self, name: str, description: str, schema: dict[str, Any] | None = None) -> Callable[[Handler], Handler]:
        """Decorator: `handler(data)` runs when the character takes this action."""

        def register(handler: Handler) -> Handler:
            self.actions[name] = _Action(name, description, schema, handler)
            return handler

        return register

    async def register(self, *names: str) -> None:
        """Tell the server about these actions (all of them if none are named)."""
        wanted = [self.actions[n] for n in names] if names else list(self.actions.values())
        await self._send("actions/register", {"actions": [a.wire() for a in wanted]})

    async def unregister(self, *names: str) -> None:
        await self._send("actions/unregister", {"action_names": list(names)})

    async def replace(self, name: str, description: str | None = None, schema: dict[str, Any] | None = None) -> None:
        """Change an action (re-registering a name is ignored by the server: unregister first)."""
        action = self.actions[name]
        if description is not None:
            action.description = description
        action.schema = schema
        await self.unregister(name)
        await self.register(name)

    # ---- messages ----------------------------------------------------------------------------
    async def context(self, message: str, silent: bool = False) -> None:
        await self._send("context", {"message": message, "silent": silent})

    async def force(self, query: str, action_names: list[str] | None = None, *, state: str = "",
                    priority: str = "low", ephemeral: bool = False) -> None:
        data: dict[str, Any] = {"query": query, "action_names": action_names or list(self.actions),
                                "priority": priority}
        if state:
            data["state"] = state
        if ephemeral:
            data["ephemeral_context"] = True
        await self._send("actions/force", data)

    async def _send(self, command: str, data: dict[str, Any] | None = None) -> None:
        if self._ws is None:
            raise RuntimeError("not connected: use `async with game:` or `await game.connect()`")
        frame: dict[str, Any] = {"command": command, "game": self.name}
        if data is not None:
            frame["data"] = data
        await self._ws.send(json.dumps(frame))

    # ---- connection --------------------------------------------------------------------------
    async def connect(self) -> None:
        self._ws = await connect(self.url)
        await self._send("startup")
        if self.actions:
            await self.register()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def __aenter__(self) -> Game:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stop(self) -> None:
        """End `run()` (from a handler, when the game is over)."""
        self._stop.set()

    async def run(self, until: Callable[[], bool] | None = None) -> None:
        """Answer the server until `stop()`, until `until()` is true after a message (e.g. "a
        move was made"), or until the server closes the connection."""
        if self._ws is None:
            raise RuntimeError("not connected")
        stopping = asyncio.create_task(self._stop.wait(), name="game-sdk-stop")
        try:
            while not self._stop.is_set() and not (until is not None and until()):
                receiving = asyncio.create_task(self._ws.recv(), name="game-sdk-recv")
                done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    receiving.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receiving
                    break
                try:
                    raw = receiving.result()
                except ConnectionClosed:
                    break  # the server went away
                await self._on(raw)
        finally:
            stopping.cancel()

    async def _on(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
            command, data = message.get("command"), message.get("data") or {}
        except (ValueError, AttributeError):
            log.warning("server sent something that is not a command", extra={"frame": str(raw)[:200]})
            return
        if command == "action":
            await self._action(data)
        elif command == "actions/reregister_all":
            if self.actions:
                await self.register()
        elif command == "startup":
            self.session = data.get("session")
        elif command in ("shutdown/graceful", "shutdown/immediate"):
            wants = command == "shutdown/immediate" or bool(data.get("wants_shutdown", True))
            if self.on_shutdown is not None:
                await self.on_shutdown(wants)
            if wants:
                await self._send("shutdown/ready")
        else:
            log.info("server command not handled", extra={"command": command})

    async def _action(self, data: dict[str, Any]) -> None:
        action_id, name = str(data.get("id")), data.get("name")
        action = self.actions.get(name) if isinstance(name, str) else None
        try:
            if action is None:
                raise Refused(f"unknown action {name!r}")
            args = None
            if action.schema:
                try:
                    args = json.loads(data.get("data") or "null")
                    jsonschema.validate(args, action.schema)
                except (ValueError, jsonschema.ValidationError) as exc:
                    raise Refused(f"invalid data for {action.name}: {getattr(exc, 'message', exc)}") from None
            message = await action.handler(args)
            result = {"id": action_id, "success": True, "message": message or ""}
        except Refused as exc:
            result = {"id": action_id, "success": False, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the game reports it and carries on
            log.exception("action handler failed", extra={"action": name})
            result = {"id": action_id, "success": False, "message": f"{type(exc).__name__}: {exc}"}
        await self._send("action/result", result)
