"""Twitch through twitchio's real payload path, with no network: EventSub notification JSON is
turned into twitchio's own objects and dispatched to the client's handlers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from twitchio.models.eventsub_ import create_event_instance

from plugins.chat_twitch import (
    EVENTS,
    SendLimiter,
    TwitchAccount,
    TwitchChatSource,
    TwitchError,
    TwitchEvents,
    TwitchReplies,
    load_account,
    save_account,
)
from plugins.twitch_auth import login
from runtime.events import InputEvent
from tests.conftest import FastClock
from tests.fake_twitch import FakeTwitch

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
    results = [limiter.offer(f"reply {i}") for i in range(25)]
    assert results[:19] == ["sent"] * 19 and results[19] == "queued" and set(results[20:]) == {"merged"}
    await asyncio.sleep(0.4)  # 40 s of clock time
    runner.cancel()
    assert len(sent) == 20
    times = [t for t, _ in sent]
    assert all(sum(1 for u in times if t <= u < t + 30.0) <= 19 for t in times)  # never 20 in 30 s
    assert sent[-1][1].startswith("reply 19 | reply 20")
    long = SendLimiter(clock, send)
    assert long.offer("x" * 600) == "sent" and len(long.ready[0]) == 500


@pytest.fixture
def twitch_at(monkeypatch):
    """Point twitchio's endpoints at a fake Twitch on 127.0.0.1 (they are read at call time)."""
    import twitchio.eventsub.websockets
    import twitchio.http

    def point(port: int) -> None:
        monkeypatch.setattr(twitchio.http.Route, "BASE", f"http://127.0.0.1:{port}/helix/")
        monkeypatch.setattr(twitchio.http.Route, "ID_BASE", f"http://127.0.0.1:{port}/")
        monkeypatch.setattr(twitchio.eventsub.websockets, "WSS", f"ws://127.0.0.1:{port}/ws")

    return point


ACCOUNT = TwitchAccount(client_id="fake-client", bot_id="2000", bot_token="bot-token", bot_refresh="r1",
                        broadcaster_id="1000", broadcaster_token="broadcaster-token", broadcaster_refresh="r2")


async def test_live_chat_over_a_fake_eventsub_socket_and_replies_back(twitch_at):
    fake = await FakeTwitch().start()
    twitch_at(fake.port)
    clock = FastClock(1)
    source = TwitchChatSource(clock, ACCOUNT, events=("message", "raid"))
    got: list[InputEvent] = []

    async def read() -> None:
        async for event in source:
            got.append(event)

    reader = asyncio.create_task(read(), name="test-twitch-read")
    try:
        await asyncio.wait_for(source.connected.wait(), 10)
        assert [s["type"] for s in fake.subscriptions] == ["channel.chat.message", "channel.raid"]
        assert fake.subscriptions[0]["transport"]["method"] == "websocket"
        await fake.push(frame("channel.chat.message", chat_event("hello from the fake")))
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.02)
        assert [(e.text, e.author) for e in got] == [("hello from the fake", "Ada")]
        replies = TwitchReplies(source, clock)
        await replies.begin_turn("t1", tuple(got))
        await replies.end_turn("t1", False, "Hi Ada, welcome!")
        for _ in range(200):
            if fake.chat:
                break
            await asyncio.sleep(0.02)
        [sent] = fake.chat
        assert (sent["broadcaster_id"], sent["sender_id"], sent["message"]) == ("1000", "2000", "Hi Ada, welcome!")
        await replies.aclose()
    finally:
        reader.cancel()
        await source.aclose()
        await fake.stop()


async def test_twitch_unreachable_is_said_once_and_retried_until_it_comes_back(twitch_at, caplog):
    import socket as socketlib

    caplog.set_level(logging.INFO, logger="plugins.chat_twitch")
    probe = socketlib.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there yet
    twitch_at(port)
    source = TwitchChatSource(FastClock(20), ACCOUNT, events=("message",), max_backoff_s=2.0)
    reader = asyncio.create_task(anext(aiter(source)), name="test-twitch-read")
    try:
        await asyncio.sleep(0.5)  # several failed tries
        assert caplog.text.count("Twitch unreachable") == 1
        fake = await FakeTwitch().start(port)
        await asyncio.wait_for(source.connected.wait(), 10)
        assert fake.subscriptions and "Twitch connected" in caplog.text
    finally:
        reader.cancel()
        await source.aclose()
    await fake.stop()


def test_tokens_are_stored_for_this_user_alone_and_never_printed(tmp_path):
    path = tmp_path / "twitch.json"
    save_account(path, ACCOUNT)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_account(path) == ACCOUNT
    assert "bot-token" not in repr(ACCOUNT) and "broadcaster-token" not in str(ACCOUNT)
    path.write_text("{broken")
    with pytest.raises(TwitchError, match="damaged"):
        load_account(path)
    with pytest.raises(TwitchError, match="omoide twitch login"):
        load_account(tmp_path / "missing.json")


async def test_login_with_the_device_code_flow_stores_both_accounts(tmp_path):
    fake = await FakeTwitch().start()
    shown: list[str] = []
    path = tmp_path / "twitch.json"
    url = f"http://127.0.0.1:{fake.port}"
    try:
        await asyncio.to_thread(login, path, url, "fake-client", "bot", EVENTS, shown.append, lambda s: None)
        fake.polls = 0
        account = await asyncio.to_thread(login, path, url, "fake-client", "broadcaster", ("message", "cheer"),
                                          shown.append, lambda s: None)
    finally:
        await fake.stop()
    assert (account.bot_id, account.bot_token, account.broadcaster_id) == ("2000", "bot-token", "1000")
    assert account.broadcaster_token == "broadcaster-token" and account.client_id == "fake-client"
    assert fake.device_scopes == "channel:bot bits:read"
    assert shown[0] == ("Open https://www.twitch.tv/activate and enter the code ABCD-EFGH"
                        " (scopes: user:read:chat user:write:chat user:bot).")
    assert not any("token" in line and "saved" not in line for line in shown)  # no token printed
    assert (path.stat().st_mode & 0o777) == 0o600 and load_account(path) == account
