"""What stands between our servers (the avatar channel, the game API) and whoever connects: the
token, the browser's Origin, and a per-connection message rate. See docs/security.md.

A web page open in the streamer's browser can open a WebSocket to 127.0.0.1 like any local tool;
the browser always says which page it is (the Origin header), so a server that checks it keeps
foreign pages out. Tools that are not browsers send no Origin and are let in on this machine.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def given_token(request: Request | None) -> str:
    """The token a client offered: `?token=` in the URL, or `Authorization: Bearer`."""
    if request is None:
        return ""
    given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
    header = request.headers.get("Authorization", "")
    return given or (header[7:] if header.startswith("Bearer ") else "")


def control_ok(request: Request | None, token: str) -> bool:
    """True when no control token is set or the client gave it as `?control=` (constant time)."""
    if not token:
        return True
    given = parse_qs(urlsplit(request.path).query).get("control", [""])[0] if request is not None else ""
    return hmac.compare_digest(given.encode(), token.encode())


def token_ok(request: Request | None, token: str) -> bool:
    """True when no token is set or the client gave it (compared in constant time)."""
    return not token or hmac.compare_digest(given_token(request).encode(), token.encode())


def origin_ok(request: Request, allowed: Iterable[str], port: int) -> bool:
    """No Origin (not a browser), this server's own pages (the overlay), or a configured one."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    own = {f"http://{host}:{port}" for host in ("127.0.0.1", "localhost", "[::1]")}
    allowed = set(allowed)
    return origin in own or origin in allowed or "*" in allowed


def refuse(status: HTTPStatus, text: str) -> Response:
    body = (text + "\n").encode()
    return Response(status.value, status.phrase, Headers([("Content-Type", "text/plain; charset=utf-8"),
                                                          ("Content-Length", str(len(body)))]), body)


class RateLimit:
    """A token bucket per connection: `rate` messages a second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self.refused = 0

    def allow(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.refused += 1
        return False


def short(value: Any, limit: int = 80) -> str:
    """A value's repr cut to `limit` characters, for error messages about what a peer sent."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
