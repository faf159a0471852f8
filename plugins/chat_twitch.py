"""Twitch chat and channel events in, replies out, on twitchio 3 (EventSub).

`TwitchEvents` is a twitchio Client whose event handlers turn twitchio's own payload objects
(chat messages, cheers, subscriptions and gifts, channel-point redemptions, raids, follows) into
InputEvents carrying the viewer's id, name, badges, bits and reward, marked as untrusted viewer
speech. `SendLimiter` keeps chat replies inside Twitch's limits (20 messages per 30 s, 100 as a
moderator) by merging or dropping the excess instead of getting the bot muted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import twitchio
from twitchio import eventsub

from runtime.events import EventMeta, InputEvent, InputKind, Priority
from runtime.ports import Clock, FollowingSink, cancel_and_wait

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

    def _event(self, text: str, user: Any, kind: str, **meta: Unpack[EventMeta]) -> None:
        user_id, name = _user(user)
        self.emit(InputEvent(InputKind.CHAT, text, "twitch", self.clock.now(), name, Priority.NORMAL,
                             meta={"event": kind, "user_id": user_id, "untrusted": True, **meta}))

    async def event_message(self, payload: Any) -> None:
        chatter = payload.chatter
        if self.bot_id and str(chatter.id) == str(self.bot_id):
            return  # our own replies
        months = next((int(b.info) for b in payload.badges if b.set_id == "subscriber" and str(b.info).isdigit()), 0)
        meta: EventMeta = {
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
    dropped) and goes out as soon as the window allows. `offer` never waits on the network:
    `run` does the sending."""

    def __init__(self, clock: Clock, send: Callable[[str], Awaitable[None]], limit: int = 20,
                 window_s: float = 30.0, margin: int = 1) -> None:
        self.clock = clock
        self.send = send
        self.limit = max(1, limit - margin)  # a little under Twitch's own count
        self.window = window_s
        self.sent: deque[float] = deque()
        self.ready: deque[str] = deque()  # counted in the window, not yet handed to `send`
        self.pending = ""
        self.merged = 0
        self.dropped = 0
        self._wake = asyncio.Event()

    def _room(self) -> bool:
        now = self.clock.now()
        while self.sent and now - self.sent[0] >= self.window:
            self.sent.popleft()
        return len(self.sent) < self.limit

    def offer(self, text: str) -> str:
        """Take a reply: "sent" (goes out now), "queued", "merged" or "dropped"."""
        text = " ".join(text.split())[:MAX_MESSAGE]
        if not text:
            return "dropped"
        self._wake.set()
        if not self.pending and self._room():
            self.sent.append(self.clock.now())
            self.ready.append(text)
            return "sent"
        if not self.pending:
            self.pending = text
            return "queued"
        if len(self.pending) + 3 + len(text) <= MAX_MESSAGE:
            self.pending += " | " + text
            self.merged += 1
            return "merged"
        self.dropped += 1
        return "dropped"

    async def run(self) -> None:
        """Send what was offered, in order, keeping the window; runs for the life of the sink."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.ready or self.pending:
                if self.ready:
                    await self.send(self.ready.popleft())
                elif self._room():
                    text, self.pending = self.pending, ""
                    self.sent.append(self.clock.now())
                    await self.send(text)
                else:
                    await self.clock.sleep(max(0.05, self.window - (self.clock.now() - self.sent[0])))


@dataclass(frozen=True)
class TwitchAccount:
    """What `omoide twitch login` stores: the app's client id, and the bot's and the broadcaster's
    user tokens. Never logged."""

    client_id: str
    bot_id: str
    bot_token: str
    bot_refresh: str = ""
    broadcaster_id: str = ""
    broadcaster_token: str = ""
    broadcaster_refresh: str = ""
    client_secret: str = ""

    def __repr__(self) -> str:  # keep tokens out of tracebacks and logs
        return f"TwitchAccount(client_id={self.client_id!r}, bot_id={self.bot_id!r}, broadcaster_id={self.broadcaster_id!r})"


class TwitchError(RuntimeError):
    pass


def load_account(path: Path) -> TwitchAccount:
    if not path.is_file():
        raise TwitchError(f"no Twitch tokens at {path}; run `omoide twitch login` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TwitchAccount(**{k: str(v) for k, v in data.items() if k in TwitchAccount.__dataclass_fields__})
    except (ValueError, TypeError) as exc:
        raise TwitchError(f"Twitch token file {path} is damaged ({type(exc).__name__}); run `omoide twitch login` again") from None


def save_account(path: Path, account: TwitchAccount) -> None:
    """Write the tokens readable by this user alone (mode 0600), replacing the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(account.__dict__, f, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


EVENTS = ("message", "cheer", "subscription", "gift", "redemption", "raid", "follow")


def _subscriptions(account: TwitchAccount, events: Sequence[str]) -> list[tuple[Any, dict[str, Any]]]:
    """(EventSub subscription, how to subscribe) for each event kind wanted."""
    b, bot = account.broadcaster_id, account.bot_id
    as_broadcaster = {"token_for": b}
    table: dict[str, list[tuple[Any, dict[str, Any]]]] = {
        "message": [(eventsub.ChatMessageSubscription(broadcaster_user_id=b, user_id=bot), {"as_bot": True})],
        "cheer": [(eventsub.ChannelCheerSubscription(broadcaster_user_id=b), as_broadcaster)],
        "subscription": [(eventsub.ChannelSubscribeSubscription(broadcaster_user_id=b), as_broadcaster),
                         (eventsub.ChannelSubscribeMessageSubscription(broadcaster_user_id=b), as_broadcaster)],
        "gift": [(eventsub.ChannelSubscriptionGiftSubscription(broadcaster_user_id=b), as_broadcaster)],
        "redemption": [(eventsub.ChannelPointsRedeemAddSubscription(broadcaster_user_id=b), as_broadcaster)],
        "raid": [(eventsub.ChannelRaidSubscription(to_broadcaster_user_id=b), as_broadcaster)],
        "follow": [(eventsub.ChannelFollowSubscription(broadcaster_user_id=b, moderator_user_id=b), as_broadcaster)],
    }
    out = []
    for name in events:
        if name not in table:
            raise TwitchError(f"unknown Twitch event {name!r}; choose from {', '.join(EVENTS)}")
        out += table[name]
    return out


class TwitchChatSource:
    """Implements the Source port: Twitch chat and channel events over EventSub.

    It connects in the background and keeps trying with backoff while Twitch is unreachable,
    saying so once; the character runs on meanwhile.
    """

    name = "twitch"

    def __init__(self, clock: Clock, account: TwitchAccount, events: Sequence[str] = EVENTS,
                 max_backoff_s: float = 60.0) -> None:
        if any(e != "message" for e in events) and not account.broadcaster_token:
            raise TwitchError("channel events need the broadcaster's token: run `omoide twitch login --broadcaster`")
        self.clock = clock
        self.account = account
        self.events = tuple(events)
        self.max_backoff_s = max_backoff_s
        self.queue = TwitchEventQueue()
        self.client: TwitchEvents | None = None
        self.connected = asyncio.Event()
        _subscriptions(account, self.events)  # unknown event names fail here, at start

    async def _connect(self) -> TwitchEvents:
        a = self.account
        client = TwitchEvents(self.clock, self.queue.put, client_id=a.client_id,
                              client_secret=a.client_secret or None, bot_id=a.bot_id, fetch_client_user=False)
        try:
            await client.login(token=a.bot_token, load_tokens=False, save_tokens=False)
            await client.add_token(a.bot_token, a.bot_refresh)
            if a.broadcaster_token and a.broadcaster_id != a.bot_id:
                await client.add_token(a.broadcaster_token, a.broadcaster_refresh)
            for payload, how in _subscriptions(a, self.events):
                await client.subscribe_websocket(payload, **how)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close()
            raise
        return client

    async def _keep_connected(self) -> None:
        delay, said = 1.0, False
        while True:
            try:
                self.client = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - network, auth: keep trying, say it once
                if not said:
                    log.warning("Twitch unreachable; chat is off until it comes back (retrying)",
                                extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                    said = True
                await self.clock.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            log.info("Twitch connected", extra={"events": list(self.events)})
            self.connected.set()
            return  # twitchio keeps the EventSub socket alive and reconnects it itself

    async def __aiter__(self) -> AsyncIterator[InputEvent]:  # type: ignore[override]
        connect = asyncio.create_task(self._keep_connected(), name="twitch-connect")
        try:
            async for event in self.queue:
                yield event
        finally:
            await cancel_and_wait(connect)

    async def aclose(self) -> None:
        await self.queue.aclose()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()

    async def send(self, text: str) -> None:
        """Post a chat message as the bot (callers go through a SendLimiter)."""
        if self.client is None:
            return
        channel = self.client.create_partialuser(self.account.broadcaster_id or self.account.bot_id)
        await channel.send_message(message=text, sender=self.account.bot_id, token_for=self.account.bot_id)


class TwitchReplies(FollowingSink):
    """Implements the OutputSink port (non-pacing): what was said in answer to Twitch goes to chat."""

    def __init__(self, source: TwitchChatSource, clock: Clock, moderator: bool = False) -> None:
        self.limiter = SendLimiter(clock, self._send, LIMITS["moderator" if moderator else "user"])
        self.source = source
        self._to_twitch = False
        self._runner: asyncio.Task[None] | None = None

    async def _send(self, text: str) -> None:
        try:
            await self.source.send(text)
        except Exception as exc:  # noqa: BLE001 - a lost chat line must not stop the character
            log.warning("chat reply not sent", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})

    async def begin_turn(self, turn_id: str, inputs: tuple[InputEvent, ...]) -> None:
        self._to_twitch = any(e.source == "twitch" for e in inputs)

    async def end_turn(self, turn_id: str, interrupted: bool, spoken_text: str,
                       timings: Mapping[str, float] | None = None) -> None:
        if self._to_twitch and spoken_text:
            if self._runner is None:
                self._runner = asyncio.create_task(self.limiter.run(), name="twitch-send")
            result = self.limiter.offer(spoken_text)
            if result == "dropped":
                log.info("chat reply dropped by the rate limiter", extra={"turn_id": turn_id})

    async def aclose(self) -> None:
        if self._runner is not None:
            await cancel_and_wait(self._runner)


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
