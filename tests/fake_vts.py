"""A fake VTube Studio on 127.0.0.1 speaking its public API's real envelope: two-step
authentication with its error ids (8 auth required, 50 denied), parameter injection (453 unknown
parameter), hotkeys by id or case-insensitive name. It records what plugins did."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

API = "VTubeStudioPublicAPI"


class FakeVts:
    def __init__(self, hotkeys: tuple[tuple[str, str], ...] = (("Smile", "hk-smile"), ("Angry", "hk-angry")),
                 parameters: tuple[str, ...] = ("MouthOpen", "MouthSmile", "FaceAngleX")) -> None:
        self.hotkeys = hotkeys
        self.parameters = set(parameters)
        self.deny = False
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.injected: list[tuple[float, str, float]] = []  # (monotonic time, parameter, value)
        self.triggered: list[str] = []
        self.trigger_attempts: list[str] = []
        self.errors: list[int] = []
        self.port = 0
        self._server: Server | None = None

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", self.port)
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def mouth(self) -> list[float]:
        return [v for _, p, v in self.injected if p == "MouthOpen"]

    async def _handle(self, ws: ServerConnection) -> None:
        authed = False
        async for raw in ws:
            message = json.loads(raw)
            request_id = message.get("requestID") or str(uuid.uuid4())
            kind = str(message.get("messageType", ""))
            data = message.get("data") or {}

            answer, error = self._replies(ws, request_id)

            if message.get("apiName") != API or message.get("apiVersion") != "1.0" or not kind.endswith("Request"):
                await error(1, "bad envelope")
                continue
            if not isinstance(request_id, str) or not 0 < len(request_id) <= 64 or not request_id.isascii():
                await error(1, "requestID must be 1-64 ASCII characters")
                continue
            name = kind[: -len("Request")]
            if name == "AuthenticationToken":
                self.token_requests += 1
                if self.deny:
                    await error(50, "The user denied API access for your plugin.")
                    continue
                token = uuid.uuid4().hex
                self.tokens.add(token)
                await answer("AuthenticationTokenResponse", {"authenticationToken": token})
            elif name == "Authentication":
                authed = data.get("authenticationToken") in self.tokens
                await answer("AuthenticationResponse", {"authenticated": authed,
                                                        "reason": "Token valid." if authed else "Token invalid."})
            elif name == "APIState":
                await answer("APIStateResponse", {"active": True, "vTubeStudioVersion": "1.28.0",
                                                  "currentSessionAuthenticated": authed})
            elif not authed:
                await error(8, "This request requires authentication.")
            elif name == "InjectParameterData":
                values = data.get("parameterValues") or []
                unknown = [v.get("id") for v in values if v.get("id") not in self.parameters]
                if unknown:
                    await error(453, f"Parameter {unknown[0]} not found.")
                    continue
                now = time.monotonic()
                self.injected += [(now, v["id"], float(v["value"])) for v in values]
                await answer("InjectParameterDataResponse", {})
                await answer("TestEvent", {"yourTestMessage": "events interleave", "counter": len(self.injected)})
            elif name == "HotkeysInCurrentModel":
                await answer("HotkeysInCurrentModelResponse", {
                    "modelLoaded": True, "modelName": "Test Model", "modelID": "m1",
                    "availableHotkeys": [{"name": n, "type": "ToggleExpression", "description": "", "file": "",
                                          "hotkeyID": i, "keyCombination": [], "onScreenButtonID": -1}
                                         for n, i in self.hotkeys]})
            elif name == "HotkeyTrigger":
                wanted = str(data.get("hotkeyID", ""))
                self.trigger_attempts.append(wanted)
                found = next((n for n, i in self.hotkeys if i == wanted or n.lower() == wanted.lower()), None)
                if found is None:
                    await error(201, f"Hotkey {wanted} not found.")
                    continue
                self.triggered.append(found)
                await answer("HotkeyTriggerResponse", {"hotkeyID": dict((n, i) for n, i in self.hotkeys)[found]})
            else:
                await error(2, f"Unknown request {kind}.")

    def _replies(self, ws: ServerConnection, request_id: Any) -> tuple[Any, Any]:
        async def answer(name: str, payload: dict[str, Any]) -> None:
            await ws.send(json.dumps({"apiName": API, "apiVersion": "1.0", "timestamp": int(time.time() * 1000),
                                      "requestID": request_id, "messageType": name, "data": payload}))

        async def error(error_id: int, text: str) -> None:
            self.errors.append(error_id)
            await answer("APIError", {"errorID": error_id, "message": text})

        return answer, error

    def revoke(self) -> None:
        """The user revoked the plugin's access in VTube Studio's settings."""
        self.tokens.clear()
