import asyncio
import itertools

import pytest

from runtime.events import Control, InputEvent, InputKind, Priority
from runtime.inbox import Inbox, Scoring
from tests.conftest import FastClock

_viewers = itertools.count()


def chat(text, clock, priority=Priority.NORMAL, author=None, **meta):
    return InputEvent(InputKind.CHAT, text, "twitch", clock.now(), author or f"viewer{next(_viewers)}",
                      priority, meta=meta)


async def take(box, n):
    return [(await asyncio.wait_for(box.get(), 1)).text for _ in range(n)]


async def test_priority_first_then_the_best_scored():
    clock = FastClock()
    box = Inbox(clock, capacity=10, names=("Komorebi",))
    box.put(chat("low", clock, Priority.LOW))
    box.put(chat("plain remark", clock))
    box.put(chat("urgent", clock, Priority.HIGH))
    box.put(chat("a question?", clock))
    box.put(chat("hey komorebi", clock))
    box.put(chat("another remark", clock))
    # between equals the newer wins: the character stays current
    assert await take(box, 6) == ["urgent", "hey komorebi", "a question?", "another remark",
                                  "plain remark", "low"]


async def test_events_rank_by_configured_weights():
    clock = FastClock()
    box = Inbox(clock, capacity=10)
    box.put(chat("hello", clock))
    box.put(chat("followed", clock, event="follow"))
    box.put(chat("100 bits!", clock, event="cheer", bits=100))
    box.put(chat("I redeemed a song", clock, event="redemption"))
    assert await take(box, 4) == ["I redeemed a song", "100 bits!", "followed", "hello"]


async def test_one_viewer_cannot_take_over():
    clock = FastClock()
    box = Inbox(clock, capacity=20, scoring=Scoring(per_viewer=2, cooldown_s=60, cooldown_penalty=4))
    for i in range(5):
        box.put(chat(f"spam {i} from loud", clock, author="loud"))
    box.put(chat("hi from quiet", clock, author="quiet"))
    assert len(box) == 3 and box.dropped == 3  # loud keeps only their two newest
    box.answered("loud")
    assert await take(box, 3) == ["hi from quiet", "spam 4 from loud", "spam 3 from loud"]


async def test_copy_pasted_spam_is_merged_into_one_entry():
    clock = FastClock()
    box = Inbox(clock, capacity=10)
    for _ in range(6):
        box.put(chat("POGGERS!!!", clock))
        box.put(chat("poggers", clock))
    box.put(chat("what game is this?", clock))
    assert len(box) == 2 and box.merged == 11
    first = await asyncio.wait_for(box.get(), 1)
    assert first.text == "POGGERS!!!" and first.meta["merged"] == 12  # many voices outrank one
    assert len(first.meta["authors"]) == 12


async def test_old_inputs_are_dropped_by_their_kind_maximum_age():
    clock = FastClock(speed=1000)
    box = Inbox(clock, capacity=10, scoring=Scoring(max_age_s={"message": 5.0, "cheer": 60.0}))
    box.put(chat("old chat", clock, event="message"))
    box.put(chat("old cheer", clock, event="cheer"))
    await asyncio.sleep(0.01)  # 10 s of clock time
    box.put(chat("new chat", clock, event="message"))
    assert await take(box, 2) == ["old cheer", "new chat"]
    assert box.dropped == 1


async def test_a_full_inbox_keeps_the_best_and_refuses_the_worst():
    clock = FastClock()
    box = Inbox(clock, capacity=2)
    assert box.put(chat("first", clock))
    assert box.put(chat("second", clock))
    assert box.put(chat("urgent", clock, Priority.HIGH))  # the worst waiting makes room
    assert not box.put(chat("meh", clock, Priority.LOW))
    assert len(box) == 2 and box.dropped == 2
    assert await take(box, 2) == ["urgent", "second"]


async def test_control_jumps_the_queue():
    clock = FastClock()
    box = Inbox(clock, capacity=4)
    box.put(chat("chat", clock))
    box.put(InputEvent(InputKind.CONTROL, Control.INTERRUPT, "test", clock.now(), priority=Priority.CRITICAL))
    assert (await box.get_control()).text == Control.INTERRUPT
    assert len(box) == 1


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        Inbox(FastClock(), capacity=0)
