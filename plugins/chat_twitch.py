"""Twitch chat and channel events in, replies out, on twitchio 3 (EventSub).

`TwitchEvents` is a twitchio Client whose event handlers turn twitchio's own payload objects
(chat messages, cheers, subscriptions and gifts, channel-point redemptions, raids, follows) into
InputEvents carrying the viewer's id, name, badges, bits and reward, marked as untrusted viewer
speech. `SendLimiter` keeps chat replies inside Twitch's limits (20 messages per 30 s, 100 as a
moderator) by merging or dropping the excess instead of getting the bot muted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import twitchio

from runtime.events import InputEvent, InputKind, Priority
from runtime.ports import Clock

log = logging.getLogger(__name__)
MAX_MESSAGE = 500  # Twitch's limit for one chat message
LIMITS = {"user": 20, "moderator": 100}  # messages per 30 s


def _user(user: Any) -> tuple[str | None, str | None]:
    """(id, display name) of a twitchio user, or Nones."""
    if user is None:
        return None, None
    return str(getattr(user, "id", "") or "") or None, getattr(user, "display_name", None) or getattr(user, "name", None)


class TwitchEvents(twitchio.Client):
    """twitchio's client with handlers that hand every event on as an InputEvent."""

    def __init__(self, clock: Clock, emit: Callable[[InputEvent], None], **options: Any) -> None:
        super().__init__(**options)
        self.clock = clock
        self.emit = emit

    def _event(self, text: str, user: Any, event: str, **meta: Any) -> None:
        user_id, name = _user(user)
        self.emit(InputEvent(InputKind.CHAT, text, "twitch", self.clock.now(), name, Priority.NORMAL,
                             meta={"event": event, "user_id": user_id, "untrusted": True, **meta}))

    async def event_message(self, payload: Any) -> None:
        chatter = payload.chatter
        if self.bot_id and str(chatter.id) == str(self.bot_id):
            return  # our own replies
        months = next((int(b.info) for b in payload.badges if b.set_id == "subscriber" and str(b.info).isdigit()), 0)
        meta: dict[str, Any] = {
            "message_id": payload.id,
            "badges": [b.set_id for b in payload.badges],
            "moderator": bool(chatter.moderator), "vip": bool(chatter.vip),
            "subscriber": bool(chatter.subscriber), "broadcaster": bool(chatter.broadcaster),
            "sub_months": months,
        }
        if payload.cheer is not None:
            meta["bits"] = int(payload.cheer.bits)
        if payload.channel_points_id:
            meta["reward_id"] = payload.channel_points_id
        self._event(payload.text, chatter, "cheer" if "bits" in meta else "message", **meta)

    async def event_cheer(self, payload: Any) -> None:
        if payload.message and not payload.anonymous and payload.user is not None:
            return  # a cheer with a message also arrives as a chat message carrying the bits
        self._event(payload.message or f"cheered {payload.bits} bits", None if payload.anonymous else payload.user,
                    "cheer", bits=int(payload.bits), anonymous=bool(payload.anonymous))

    async def event_subscription(self, payload: Any) -> None:
        if not payload.gift:
            self._event("subscribed", payload.user, "subscription", tier=str(payload.tier), months=1)

    async def event_subscription_message(self, payload: Any) -> None:
        text = getattr(payload.text, "text", None) or str(payload.text or "") or "resubscribed"
        self._event(text, payload.user, "subscription", tier=str(payload.tier),
                    months=int(payload.cumulative_months or payload.months or 1))

    async def event_subscription_gift(self, payload: Any) -> None:
        self._event(f"gifted {payload.total} subs", None if payload.anonymous else payload.user, "gift",
                    count=int(payload.total), tier=str(payload.tier))

    async def event_custom_redemption_add(self, payload: Any) -> None:
        self._event(payload.user_input or f"redeemed {payload.reward.title}", payload.user, "redemption",
                    reward=payload.reward.title, reward_id=payload.reward.id, cost=int(payload.reward.cost))

    async def event_raid(self, payload: Any) -> None:
        self._event(f"raided with {payload.viewer_count} viewers", payload.from_broadcaster, "raid",
                    viewers=int(payload.viewer_count))

    async def event_follow(self, payload: Any) -> None:
        self._event("followed", payload.user, "follow")


class SendLimiter:
    """Twitch's chat limits, kept: at most `limit` messages in any 30 s. What does not fit waits
    as one pending message (later replies are merged into it up to 500 characters, the rest is
    dropped) and goes out as soon as the window allows."""

    def __init__(self, clock: Clock, send: Callable[[str], Awaitable[None]], limit: int = 20,
                 window_s: float = 30.0, margin: int = 1) -> None:
        self.clock = clock
        self.send = send
        self.limit = max(1, limit - margin)  # a little under Twitch's own count
        self.window = window_s
        self.sent: deque[float] = deque()
        self.pending = ""
        self.merged = 0
        self.dropped = 0
        self._wake = asyncio.Event()

    def _room(self) -> bool:
        now = self.clock.now()
        while self.sent and now - self.sent[0] >= self.window:
            self.sent.popleft()
        return len(self.sent) < self.limit

    async def offer(self, text: str) -> str:
        """Send now if the window allows ("sent"), else hold it ("queued", "merged", "dropped")."""
        text = " ".join(text.split())[:MAX_MESSAGE]
        if not text:
            return "dropped"
        if not self.pending and self._room():
            self.sent.append(self.clock.now())
            await self.send(text)
            return "sent"
        if not self.pending:
            self.pending = text
            self._wake.set()
            return "queued"
        if len(self.pending) + 3 + len(text) <= MAX_MESSAGE:
            self.pending += " | " + text
            self.merged += 1
            return "merged"
        self.dropped += 1
        return "dropped"

    async def run(self) -> None:
        """Send the pending message when the window has room; runs for the life of the sink."""
        while True:
            await self._wake.wait()
            while self.pending:
                if self._room():
                    text, self.pending = self.pending, ""
                    self.sent.append(self.clock.now())
                    await self.send(text)
                else:
                    await self.clock.sleep(max(0.05, self.window - (self.clock.now() - self.sent[0])))
            self._wake.clear()


class TwitchEventQueue:
    """The Source side: events from `TwitchEvents` wait here to be read by the director."""

    name = "twitch"

    def __init__(self, maxsize: int = 10_000) -> None:
        self._queue: asyncio.Queue[InputEvent | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, event: InputEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1  # the director is far behind; the inbox would drop it anyway

    async def __aiter__(self) -> AsyncIterator[InputEvent]:  # type: ignore[override]
        while (event := await self._queue.get()) is not None:
            yield event

    async def aclose(self) -> None:
        self._queue.put_nowait(None)
