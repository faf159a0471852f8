import asyncio

from runtime.events import Control, InputEvent, InputKind, Priority
from runtime.inbox import Inbox
from tests.conftest import FastClock


def chat(text, clock, priority=Priority.NORMAL, kind=InputKind.CHAT):
    return InputEvent(kind, text, "test", clock.now(), "viewer", priority)


async def test_higher_priority_first_then_oldest():
    clock = FastClock()
    box = Inbox(clock, capacity=10)
    for text, pr in [("a", Priority.LOW), ("b", Priority.NORMAL), ("c", Priority.HIGH), ("d", Priority.NORMAL)]:
        box.put(chat(text, clock, pr))
    assert [(await box.get()).text for _ in range(4)] == ["c", "b", "d", "a"]


async def test_full_inbox_drops_the_lowest_oldest_and_refuses_what_ranks_below_everything():
    clock = FastClock()
    box = Inbox(clock, capacity=2)
    assert box.put(chat("old", clock))
    assert box.put(chat("new", clock))
    assert box.put(chat("urgent", clock, Priority.HIGH))  # "old" makes room
    assert not box.put(chat("meh", clock, Priority.LOW))
    assert box.dropped == 2
    assert [(await box.get()).text for _ in range(2)] == ["urgent", "new"]


async def test_control_jumps_the_queue_and_stale_chat_is_let_go():
    clock = FastClock(speed=1000)
    box = Inbox(clock, capacity=4, max_age=5.0)
    box.put(chat("stale", clock))
    await asyncio.sleep(0.01)  # 10 s of clock time
    box.put(chat("fresh", clock))
    box.put(InputEvent(InputKind.CONTROL, Control.INTERRUPT, "test", clock.now(), priority=Priority.CRITICAL))
    assert (await box.get_control()).text == Control.INTERRUPT
    assert (await box.get()).text == "fresh"
    assert box.dropped == 1
