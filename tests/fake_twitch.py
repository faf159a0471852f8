"""A fake of Twitch's side, on 127.0.0.1, speaking its real formats: token validation, Helix
EventSub subscriptions and chat messages, and an EventSub WebSocket that sends the welcome and
then whatever notification frames the test pushes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web

USERS = {"bot-token": ("2000", "omoidebot"), "broadcaster-token": ("1000", "komorebi")}


class FakeTwitch:
    def __init__(self) -> None:
        self.subscriptions: list[dict[str, Any]] = []
        self.chat: list[dict[str, Any]] = []
        self.validations: list[str] = []
        self._frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.sockets = 0
        self.polls = 0
        self.approve_after = 2  # polls before the user "approves" the device code
        self.device_scopes = ""

    async def start(self, port: int = 0) -> FakeTwitch:
        app = web.Application()
        app.router.add_get("/oauth2/validate", self.validate)
        app.router.add_post("/oauth2/device", self.device)
        app.router.add_post("/oauth2/token", self.token)
        app.router.add_post("/helix/eventsub/subscriptions", self.subscribe)
        app.router.add_post("/helix/chat/messages", self.send_chat)
        app.router.add_get("/ws", self.websocket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def push(self, frame: dict[str, Any]) -> None:
        await self._frames.put(frame)

    async def validate(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").split()[-1]
        self.validations.append(token)
        if token not in USERS:
            return web.json_response({"status": 401, "message": "invalid access token"}, status=401)
        user_id, login = USERS[token]
        return web.json_response({"client_id": "fake-client", "login": login, "user_id": user_id,
                                  "scopes": ["user:read:chat", "user:write:chat", "user:bot", "channel:bot"],
                                  "expires_in": 5_000_000})

    async def device(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.device_scopes = str(form["scopes"])
        return web.json_response({"device_code": "dev-123", "expires_in": 1800, "interval": 1,
                                  "user_code": "ABCD-EFGH", "verification_uri": "https://www.twitch.tv/activate"})

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
        self.polls += 1
        if self.polls < self.approve_after:
            return web.json_response({"status": 400, "message": "authorization_pending"}, status=400)
        token = "broadcaster-token" if "channel:bot" in self.device_scopes else "bot-token"
        return web.json_response({"access_token": token, "refresh_token": "refresh-" + token, "expires_in": 14000,
                                  "scope": self.device_scopes.split(), "token_type": "bearer"})

    async def subscribe(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.subscriptions.append(body)
        sub = {"id": f"sub-{len(self.subscriptions)}", "status": "enabled", "type": body["type"],
               "version": body["version"], "condition": body["condition"], "created_at": "2026-11-28T18:00:00Z",
               "transport": {**body["transport"], "connected_at": "2026-11-28T18:00:00Z"}, "cost": 0}
        return web.json_response({"data": [sub], "total": len(self.subscriptions), "total_cost": 0,
                                  "max_total_cost": 10}, status=202)

    async def send_chat(self, request: web.Request) -> web.Response:
        self.chat.append(await request.json())
        return web.json_response({"data": [{"message_id": f"c{len(self.chat)}", "is_sent": True,
                                            "drop_reason": None}]})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets += 1
        await ws.send_str(json.dumps({
            "metadata": {"message_id": "w1", "message_type": "session_welcome",
                         "message_timestamp": "2026-11-28T18:00:00Z"},
            "payload": {"session": {"id": f"session-{self.sockets}", "status": "connected",
                                    "keepalive_timeout_seconds": 10, "reconnect_url": None,
                                    "connected_at": "2026-11-28T18:00:00Z"}},
        }))
        reader = asyncio.create_task(self._drain(ws), name="fake-twitch-read")
        try:
            while not ws.closed:
                try:
                    frame = await asyncio.wait_for(self._frames.get(), 5)
                except TimeoutError:
                    frame = {"metadata": {"message_id": "k", "message_type": "session_keepalive",
                                          "message_timestamp": "2026-11-28T18:00:00Z"}, "payload": {}}
                await ws.send_str(json.dumps(frame))
        finally:
            reader.cancel()
        return ws

    @staticmethod
    async def _drain(ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
