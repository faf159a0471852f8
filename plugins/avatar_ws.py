"""The avatar channel: a WebSocket server that streams each turn to every connected client —
turn start, subtitles, expressions, audio with a lip-sync envelope, turn end.

Every message is encoded once and put on each client's own bounded queue; a writer task per client
sends it. A slow client whose queue fills is disconnected (it may reconnect), so no client can
stall a turn or the other clients. Protocol: docs/protocols/avatar.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from plugins.audio import wav_bytes
from plugins.guard import RateLimit, control_ok, origin_ok, refuse, short, token_ok
from runtime.events import AudioChunk, InputEvent, Sentence
from runtime.ports import cancel_and_wait

log = logging.getLogger(__name__)

PROTOCOL = 1
SLOW_CLIENT = 4008  # close code for a client that could not keep up
# what the kernel may hold for one client; past it (and the message queue) the client is "slow"
SEND_BUFFER = 256 * 1024
OVERLAY = Path(__file__).with_name("overlay") / "index.html"

# an operator command from a client: its message in, the fields of its `<type>_result` out; a
# ValueError becomes an `error` message naming what was wrong
Command = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    queue: asyncio.Queue[str | None]
    dropped: bool = False
    name: str = field(default="")
    control: bool = False  # it gave the control token: it may send commands, not only listen


class AvatarServer:
    """Implements the OutputSink port (non-pacing) over WebSocket."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, *, audio_format: str = "wav",
                 character: str = "", queue_size: int = 256,
                 commands: Mapping[str, Command] | None = None, token: str = "", control_token: str = "",
                 allowed_origins: Sequence[str] = (), rate: float = 20.0, burst: int = 60) -> None:
        if audio_format not in ("wav", "pcm"):
            raise ValueError(f"avatar audio format must be 'wav' or 'pcm', not {audio_format!r}")
        self.host = host
        self.requested_port = port
        self.audio_format = audio_format
        self.character = character
        self.characters: list[str] = []  # with several on one stream: all their names (hello says them)
        self.queue_size = queue_size
        self.commands = dict(commands or {})  # message type -> handler, for operator tools
        self.token = token  # when set, every client (and the overlay page) must give it
        self.control_token = control_token  # when set, a client must give it (?control=) to send commands
        self.allowed_origins = tuple(allowed_origins)  # web pages besides our own overlay
        self.rate, self.burst = rate, burst  # commands a second per client, and the burst allowed
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._turn_start: str | None = None  # replayed to a client that joins mid-turn
        self._turn_id: str | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        self._server = await serve(self._handle, self.host, self.requested_port, compression=None,
                                   process_request=self._page,
                                   max_size=64 * 1024, close_timeout=2)
        log.info("avatar channel listening", extra={"url": f"ws://{self.host}:{self.port}"})

    async def aclose(self) -> None:
        for client in list(self._clients):
            client.queue.put_nowait(None)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # -- OutputSink ------------------------------------------------------------------------------

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        self._turn_id = turn_id
        self._turn_start = _encode(
            "turn_start",
            turn_id=turn_id,
            character=self.character,
            inputs=[{"source": e.source, "author": e.author, "text": e.text, "kind": str(e.kind)}
                    for e in inputs],
        )
        self._broadcast(self._turn_start)

    async def sentence(self, sentence: Sentence) -> None:
        self._broadcast(_encode("sentence", turn_id=sentence.turn_id, seq=sentence.seq, character=self.character,
                                text=sentence.text, expressions=list(sentence.expressions)))
        for name in sentence.expressions:
            self._broadcast(_encode("expression", turn_id=sentence.turn_id, seq=sentence.seq, name=name))

    async def play(self, chunk: AudioChunk) -> None:
        if not self._clients:
            return  # nobody listening: skip the encoding
        data = wav_bytes(chunk.pcm, chunk.rate) if self.audio_format == "wav" else chunk.pcm
        self._broadcast(_encode(
            "audio", turn_id=chunk.turn_id, seq=chunk.seq, index=chunk.index,
            format=self.audio_format, sample_rate=chunk.rate, samples=chunk.samples,
            duration_ms=round(chunk.duration * 1000, 1), slice_ms=chunk.slice_ms,
            volumes=list(chunk.envelope), audio=base64.b64encode(data).decode("ascii"),
        ))

    def clear(self) -> int:
        return 0  # the speakers know what was heard; turn_end tells clients to stop

    def pause(self) -> None:
        self._broadcast(_encode("pause", turn_id=self._turn_id))

    def resume(self) -> None:
        self._broadcast(_encode("resume", turn_id=self._turn_id))

    async def drain(self) -> None:
        pass

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        self._turn_start = None
        self._broadcast(_encode("turn_end", turn_id=turn_id, character=self.character, interrupted=interrupted,
                                spoken_text=spoken_text,
                                timings_ms={str(k): round(v * 1000, 1) for k, v in (timings or {}).items()}))

    # -- connections ------------------------------------------------------------------------------

    def _broadcast(self, message: str) -> None:
        for client in list(self._clients):
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                self._drop(client)

    def _drop(self, client: _Client) -> None:
        client.dropped = True
        self._clients.discard(client)
        log.warning("avatar client too slow; disconnected", extra={"client": client.name})
        with contextlib.suppress(asyncio.QueueFull):
            client.queue.put_nowait(None)

    async def _handle(self, ws: ServerConnection) -> None:
        client = _Client(ws, asyncio.Queue(self.queue_size), name=str(ws.remote_address),
                         control=control_ok(ws.request, self.control_token))
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        cast = {"characters": self.characters} if self.characters else {}
        client.queue.put_nowait(_encode("hello", protocol=PROTOCOL, character=self.character,
                                        audio_format=self.audio_format, **cast))
        if self._turn_start is not None:
            client.queue.put_nowait(self._turn_start)
        self._clients.add(client)
        reader = asyncio.create_task(self._read(client), name="avatar-read")
        try:
            while not client.dropped and (message := await client.queue.get()) is not None:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            await cancel_and_wait(reader)
            if client.dropped:
                await ws.close(SLOW_CLIENT, "too slow: messages were piling up")

    async def _read(self, client: _Client) -> None:
        """Read (and so answer pings for) what a client sends: operator commands."""
        limit = RateLimit(self.rate, self.burst)
        try:
            async for raw in client.ws:
                if not limit.allow():
                    if limit.refused % 100 == 1:  # said once per hundred
                        self._answer(client, _encode("error", request_id=None, message=(
                            f"more than {self.rate:g} messages a second: dropped ({limit.refused} so far)")))
                    continue
                try:
                    message = json.loads(raw)
                except (TypeError, ValueError, RecursionError):
                    log.warning("avatar client sent something that is not JSON",
                                extra={"client": client.name})
                    self._answer(client, _encode("error", request_id=None,
                                                 message="not a JSON text message (or nested too deeply)"))
                    continue
                await self._command(client, message)
        except ConnectionClosed:
            pass
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(None)  # the writer stops too


    def _page(self, connection: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP on the same port: GET /overlay is the browser overlay (plugins/overlay/); any
        other request that asks for no WebSocket upgrade (a browser's /favicon.ico, /) is a 404.
        Every request, page or WebSocket, shows the token if one is set; a browser's must come
        from our own page or an allowed origin."""
        if not token_ok(request, self.token):
            log.warning("avatar channel: a client without the token was refused")
            return refuse(HTTPStatus.UNAUTHORIZED, "unauthorized: add ?token=... (avatar.token)")
        if not origin_ok(request, self.allowed_origins, self.port):
            log.warning("avatar channel: a web page not in avatar.allowed_origins was refused",
                        extra={"origin": short(request.headers.get("Origin"))})
            return refuse(HTTPStatus.FORBIDDEN, "this page's origin is not in avatar.allowed_origins")
        if "Upgrade" in request.headers:
            return None  # a WebSocket handshake, on any path (websockets answers a malformed one)
        if urlsplit(request.path).path.rstrip("/") not in ("/overlay", "/overlay/index.html"):
            return refuse(HTTPStatus.NOT_FOUND, "not found: the overlay page is /overlay;"
                                                " WebSocket clients connect to any path")
        body = OVERLAY.read_bytes()
        return Response(200, "OK", Headers([("Content-Type", "text/html; charset=utf-8"),
                                             ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]), body)

    async def _command(self, client: _Client, message: Any) -> None:
        """Run an operator command and answer the client that sent it: `<type>_result` with what
        the handler returned, or `error` naming what was wrong."""
        kind = message.get("type") if isinstance(message, dict) else None
        handler = self.commands.get(kind) if isinstance(kind, str) else None
        request = message.get("request_id") if isinstance(message, dict) else None
        if not isinstance(request, str | int | None) or (isinstance(request, str) and len(request) > 100):
            request = None  # echoed back only when it is a short id
        if handler is not None and not client.control:
            log.warning("avatar channel: a command without the control token was refused",
                        extra={"client": client.name, "kind": short(kind, 40)})
            answer = _encode("error", request_id=request, message=(
                f"{kind}: this connection may only listen; commands need the control token"
                " (connect with ?control=..., the token in avatar.control_token_file)"))
        elif handler is None:
            known = ", ".join(sorted(self.commands)) or "none"
            answer = _encode("error", request_id=request,
                             message=f"unknown message type {short(kind, 40)}; this server accepts: {known}")
        else:
            try:
                answer = _encode(f"{kind}_result", request_id=request, **await handler(message))
            except ValueError as exc:
                answer = _encode("error", request_id=request, message=f"{kind}: {exc}")
            except Exception as exc:  # noqa: BLE001 - the channel and the character carry on
                log.exception("avatar channel command failed", extra={"kind": kind})
                answer = _encode("error", request_id=request, message=f"{kind} failed: {type(exc).__name__}")
        log.info("avatar client command", extra={"client": client.name, "kind": short(kind, 40)})
        self._answer(client, answer)

    @staticmethod
    def _answer(client: _Client, answer: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            client.queue.put_nowait(answer)


def _encode(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, ensure_ascii=False, separators=(",", ":"))
