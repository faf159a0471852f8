"""VTube Studio: a client of its public WebSocket API (DenchiSoft/VTubeStudio) that moves the
model's mouth with the character's voice and triggers hotkeys for expression tags.

- **Authentication**: a token is requested once (the user approves a popup in VTube Studio) and
  stored in `token_file`; each connection authenticates with it; a token VTube Studio no longer
  accepts (revoked) is requested again.
- **Mouth**: the audio chunks' volume envelopes (20 ms slices) are laid on a timeline starting
  when each chunk reaches the speakers; a ticker injects the mouth parameter (`MouthOpen` by
  default) at `rate_hz`, and at least once a second when silent, so VTube Studio keeps our
  control; the mouth closes when speech ends, pauses or is interrupted.
- **Expressions**: each tag of a sentence (`[happy]`) triggers the hotkey mapped to it in
  `hotkeys` (by name or id), or the hotkey of that name; one VTube Studio does not know is logged
  once and ignored.
- Replies are matched to requests by `requestID` (events interleave). VTube Studio being closed
  or restarting never holds up a turn: calls made while disconnected are dropped and the client
  reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from runtime.events import AudioChunk, Sentence
from runtime.ports import Clock, FollowingSink, cancel_and_wait

log = logging.getLogger(__name__)

API = "VTubeStudioPublicAPI"
AUTH_REQUIRED, DENIED, TOKEN_PENDING = 8, 50, 51


class VtsError(Exception):
    """VTube Studio answered with an APIError (or could not be reached)."""

    def __init__(self, error_id: int, message: str) -> None:
        super().__init__(f"VTube Studio error {error_id}: {message}")
        self.error_id = error_id


class VtsClient:
    """The connection: requests with requestIDs, answers matched to them, authentication."""

    def __init__(self, url: str, token_file: Path, plugin: str = "Omoide", developer: str = "Omoide",
                 timeout_s: float = 10.0) -> None:
        self.url = url
        self.token_file = Path(token_file)
        self.plugin = plugin
        self.developer = developer
        self.timeout_s = timeout_s
        self._ws: ClientConnection | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def connect(self) -> None:
        """Open the socket and authenticate (requesting a token when there is none or it was
        revoked). Raises VtsError, OSError or a websockets error."""
        self._ws = await connect(self.url, open_timeout=self.timeout_s)
        self._reader = asyncio.create_task(self._read(self._ws), name="vts-read")
        try:
            token = self._stored_token()
            if token is None or not await self._authenticate(token):
                token = await self._new_token()
                if not await self._authenticate(token):
                    raise VtsError(AUTH_REQUIRED, "VTube Studio refused a token it had just given")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        await cancel_and_wait(self._reader)
        self._reader = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("VTube Studio disconnected"))
        self._waiting.clear()

    def _stored_token(self) -> str | None:
        try:
            token = self.token_file.read_text().strip()
        except FileNotFoundError:
            return None
        return token or None

    async def _new_token(self) -> str:
        log.info("asking VTube Studio for a token: approve the plugin in its popup",
                 extra={"plugin": self.plugin})
        data = await self.request("AuthenticationToken", {"pluginName": self.plugin,
                                                          "pluginDeveloper": self.developer}, timeout_s=120)
        token = str(data["authenticationToken"])
        self.token_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.token_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # readable by you alone
        with os.fdopen(fd, "w") as f:
            f.write(token)
        os.replace(tmp, self.token_file)
        return token

    async def _authenticate(self, token: str) -> bool:
        data = await self.request("Authentication", {"pluginName": self.plugin, "pluginDeveloper": self.developer,
                                                     "authenticationToken": token})
        if not data.get("authenticated"):
            log.warning("VTube Studio did not accept the stored token; asking for a new one",
                        extra={"reason": data.get("reason")})
        return bool(data.get("authenticated"))

    async def request(self, name: str, data: Mapping[str, Any] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        """Send `<name>Request`, wait for its answer; VtsError for an APIError."""
        if self._ws is None:
            raise ConnectionError("not connected to VTube Studio")
        request_id = f"omoide-{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self._ws.send(json.dumps({"apiName": API, "apiVersion": "1.0", "requestID": request_id,
                                            "messageType": f"{name}Request", "data": dict(data or {})}))
            async with asyncio.timeout(timeout_s or self.timeout_s):
                message = await future
        finally:
            self._waiting.pop(request_id, None)
        if message.get("messageType") == "APIError":
            error = message.get("data") or {}
            raise VtsError(int(error.get("errorID", -1)), str(error.get("message", "")))
        return dict(message.get("data") or {})

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    log.warning("VTube Studio sent something that is not JSON")
                    continue
                future = self._waiting.get(str(message.get("requestID")))
                if future is not None and not future.done():
                    future.set_result(message)
                # anything else is an event or a late answer: not ours to wait for
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("VTube Studio disconnected"))


class VtsAvatar(FollowingSink):
    """Implements the OutputSink port (non-pacing): mouth and expressions in VTube Studio."""

    def __init__(self, client: VtsClient, clock: Clock, *, mouth_parameter: str = "MouthOpen",
                 hotkeys: Mapping[str, str] | None = None, rate_hz: float = 50.0, gain: float = 1.0,
                 reconnect_s: tuple[float, float] = (1.0, 30.0)) -> None:
        self.client = client
        self.clock = clock
        self.mouth_parameter = mouth_parameter
        self.hotkeys = {k.lower(): v for k, v in (hotkeys or {}).items()}
        self.rate_hz = rate_hz
        self.gain = gain
        self.reconnect_s = reconnect_s
        self._slices: deque[tuple[float, float]] = deque()  # (when, mouth value) on the clock
        self._until = 0.0  # when the last queued slice ends
        self._current = 0.0
        self._hotkeys: deque[tuple[str, str]] = deque()  # (tag, hotkey) waiting for the ticker
        self._unknown: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_sent = -1.0
        self._last_value = 0.0
        self.sent: int = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vts")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.client.close()

    # ---- the turn ----------------------------------------------------------------------------
    async def play(self, chunk: AudioChunk) -> None:
        now = self.clock.now()
        start = max(now, self._until)
        step = chunk.slice_ms / 1000
        for i, volume in enumerate(chunk.envelope):
            self._slices.append((start + i * step, min(1.0, volume * self.gain)))
        self._until = start + chunk.duration

    async def sentence(self, sentence: Sentence) -> None:
        """Queue the sentence's hotkeys for the ticker: a sink must return at once, and VTube
        Studio may be slow or gone."""
        for tag in sentence.expressions:
            hotkey = self.hotkeys.get(tag.lower(), tag)
            if self.client.connected and hotkey not in self._unknown:
                self._hotkeys.append((tag, hotkey))

    async def _trigger(self) -> None:
        while self._hotkeys and self.client.connected:
            tag, hotkey = self._hotkeys.popleft()
            if hotkey in self._unknown:
                continue
            try:
                await self.client.request("HotkeyTrigger", {"hotkeyID": hotkey})
            except VtsError as exc:
                self._unknown.add(hotkey)
                log.warning("VTube Studio has no hotkey for this expression; it is ignored from now on",
                            extra={"tag": tag, "hotkey": hotkey, "error": str(exc)})

    def clear(self) -> int:
        self._close_mouth()
        return 0

    def pause(self) -> None:
        self._close_mouth()

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        if interrupted:
            self._close_mouth()

    def _close_mouth(self) -> None:
        self._slices.clear()
        self._until = 0.0
        self._current = 0.0

    def mouth(self, now: float) -> float:
        """The mouth value for this moment (0 when nothing is being heard)."""
        if now >= self._until:
            self._slices.clear()
            self._current = 0.0
            return 0.0
        while self._slices and self._slices[0][0] <= now:
            self._current = self._slices.popleft()[1]
        return self._current

    # ---- the connection ----------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.reconnect_s[0]
        while True:
            try:
                await self.client.connect()
                log.info("VTube Studio connected", extra={"url": self.client.url})
                delay = self.reconnect_s[0]
                await self._tick()
            except (OSError, InvalidHandshake, InvalidURI, ConnectionError, TimeoutError, VtsError) as exc:
                if isinstance(exc, VtsError) and exc.error_id == DENIED:
                    log.error("the plugin was denied in VTube Studio; allow it there (retrying)")
                else:
                    log.info("VTube Studio not reachable; retrying", extra={"error": str(exc), "in_s": delay})
            await self.client.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_s[1])

    async def _tick(self) -> None:
        """Inject the mouth at rate_hz while it moves, and at least once a second when still."""
        period = 1.0 / self.rate_hz
        while self.client.connected:
            await self._trigger()
            value = round(self.mouth(self.clock.now()), 3)
            now = time.monotonic()
            if value != self._last_value or value > 0 or now - self._last_sent >= 0.5:
                try:
                    await self.client.request("InjectParameterData", {
                        "faceFound": False, "mode": "set",
                        "parameterValues": [{"id": self.mouth_parameter, "value": value}]})
                    self.sent += 1
                except VtsError as exc:  # e.g. 453: the model has no such parameter
                    if self.mouth_parameter not in self._unknown:
                        self._unknown.add(self.mouth_parameter)
                        log.error("VTube Studio refuses the mouth parameter; set vts.mouth_parameter to one"
                                  " the model maps (MouthOpen by default)", extra={"error": str(exc)})
                self._last_sent, self._last_value = now, value
            await asyncio.sleep(period)  # real time: the mouth follows what is heard now
