"""Twitch through twitchio's real payload path, with no network: EventSub notification JSON is
turned into twitchio's own objects and dispatched to the client's handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from twitchio.models.eventsub_ import create_event_instance

from plugins.chat_twitch import SendLimiter, TwitchEvents
from runtime.events import InputEvent
from tests.conftest import FastClock

BROADCASTER = {"broadcaster_user_id": "1000", "broadcaster_user_login": "komorebi", "broadcaster_user_name": "Komorebi"}
USER = {"user_id": "42", "user_login": "ada", "user_name": "Ada"}


def frame(sub_type: str, event: dict[str, Any], version: str = "1") -> dict[str, Any]:
    return {
        "metadata": {"message_id": "m1", "message_type": "notification", "message_timestamp": "2026-11-28T18:00:00Z",
                     "subscription_type": sub_type, "subscription_version": version},
        "payload": {
            "subscription": {"id": "s1", "type": sub_type, "version": version, "status": "enabled", "cost": 0,
                             "condition": {"broadcaster_user_id": "1000"},
                             "transport": {"method": "websocket", "session_id": "x"},
                             "created_at": "2026-11-28T17:00:00Z"},
            "event": event,
        },
    }


def chat_event(text: str, *, badges: list[dict[str, str]] = (), bits: int | None = None,
               reward: str | None = None, chatter: str = "42", name: str = "Ada") -> dict[str, Any]:
    return {
        **BROADCASTER, "chatter_user_id": chatter, "chatter_user_login": name.lower(), "chatter_user_name": name,
        "message_id": "abc", "message": {"text": text, "fragments": [{"type": "text", "text": text, "cheermote": None,
                                                                       "emote": None, "mention": None}]},
        "message_type": "text", "badges": list(badges), "cheer": {"bits": bits} if bits else None,
        "color": "#FF0000", "reply": None, "channel_points_custom_reward_id": reward,
        "channel_points_animation_id": None, "source_broadcaster_user_id": None,
        "source_broadcaster_user_login": None, "source_broadcaster_user_name": None,
        "source_message_id": None, "source_badges": None, "is_source_only": None,
    }


@pytest.fixture
async def client():
    events: list[InputEvent] = []
    bot = TwitchEvents(FastClock(), events.append, client_id="fake", client_secret="fake", bot_id="2000")
    yield bot, events
    await bot.close()


async def deliver(bot: TwitchEvents, name: str, sub_type: str, event: dict[str, Any], version: str = "1") -> None:
    payload = create_event_instance(sub_type, frame(sub_type, event, version), http=bot._http)
    bot.dispatch(name, payload)
    await asyncio.sleep(0.05)  # dispatch runs the handler in a task


async def test_a_chat_message_becomes_an_input_with_the_viewers_details(client):
    bot, events = client
    badges = [{"set_id": "subscriber", "id": "12", "info": "14"}, {"set_id": "vip", "id": "1", "info": ""}]
    await deliver(bot, "message", "channel.chat.message", chat_event("hi komorebi, how are you?", badges=badges))
    [e] = events
    assert (e.text, e.author, e.source) == ("hi komorebi, how are you?", "Ada", "twitch")
    assert e.meta["user_id"] == "42" and e.meta["untrusted"] is True and e.meta["event"] == "message"
    assert e.meta["sub_months"] == 14 and e.meta["vip"] and e.meta["subscriber"] and not e.meta["moderator"]


async def test_cheers_redemptions_and_the_bots_own_lines(client):
    bot, events = client
    await deliver(bot, "message", "channel.chat.message", chat_event("Cheer100 go go", bits=100))
    await deliver(bot, "message", "channel.chat.message", chat_event("play a song", reward="r-7"))
    await deliver(bot, "message", "channel.chat.message", chat_event("my own reply", chatter="2000", name="Bot"))
    assert [(e.meta["event"], e.meta.get("bits"), e.meta.get("reward_id")) for e in events] == [
        ("cheer", 100, None), ("message", None, "r-7")]


async def test_channel_events(client):
    bot, events = client
    await deliver(bot, "raid", "channel.raid", {
        "from_broadcaster_user_id": "77", "from_broadcaster_user_login": "bigstreamer",
        "from_broadcaster_user_name": "BigStreamer", "to_broadcaster_user_id": "1000",
        "to_broadcaster_user_login": "komorebi", "to_broadcaster_user_name": "Komorebi", "viewers": 250})
    await deliver(bot, "custom_redemption_add", "channel.channel_points_custom_reward_redemption.add", {
        **BROADCASTER, **USER, "id": "red1", "user_input": "sing the moss waltz", "status": "unfulfilled",
        "reward": {"id": "rw1", "title": "Song request", "cost": 500, "prompt": ""},
        "redeemed_at": "2026-11-28T18:00:00Z"})
    await deliver(bot, "subscription", "channel.subscribe", {**BROADCASTER, **USER, "tier": "1000", "is_gift": False})
    got = [(e.meta["event"], e.author, e.text) for e in events]
    assert got == [("raid", "BigStreamer", "raided with 250 viewers"),
                   ("redemption", "Ada", "sing the moss waltz"),
                   ("subscription", "Ada", "subscribed")]
    assert events[0].meta["viewers"] == 250 and events[1].meta["reward"] == "Song request"


async def test_the_send_limiter_keeps_inside_twitchs_window_and_merges_the_excess():
    clock = FastClock(speed=100)
    sent: list[tuple[float, str]] = []

    async def send(text: str) -> None:
        sent.append((clock.now(), text))

    limiter = SendLimiter(clock, send, limit=20, window_s=30.0)
    runner = asyncio.create_task(limiter.run(), name="test-limiter")
    results = [await limiter.offer(f"reply {i}") for i in range(25)]
    assert results[:19] == ["sent"] * 19 and results[19] == "queued" and set(results[20:]) == {"merged"}
    await asyncio.sleep(0.4)  # 40 s of clock time
    runner.cancel()
    assert len(sent) == 20
    times = [t for t, _ in sent]
    assert all(sum(1 for u in times if t <= u < t + 30.0) <= 19 for t in times)  # never 20 in 30 s
    assert sent[-1][1].startswith("reply 19 | reply 20")
    assert await SendLimiter(clock, send).offer("x" * 600) == "sent" and len(sent[-1][1]) == 500
