"""The one bridge from a worker thread to asyncio (runtime/ports.py ThreadStream), which the
model's tokens, a voice's audio and the terminal's lines all come through."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runtime.ports import ThreadStream


async def test_items_arrive_in_order_as_they_are_made_then_the_stream_ends():
    stream: ThreadStream[int] = ThreadStream()
    second = threading.Event()

    def produce() -> None:
        stream.put(1)
        second.wait(5)  # the reader has the first item before the second exists
        stream.put(2)
        stream.end()

    threading.Thread(target=produce).start()
    got = []
    async for item in stream:
        got.append(item)
        second.set()
    assert got == [1, 2] and stream.stop.is_set()


async def test_an_error_reaches_the_reader_after_the_items_before_it():
    stream: ThreadStream[str] = ThreadStream()

    def produce() -> None:
        stream.put("a")
        stream.fail(OSError("the engine broke"))

    threading.Thread(target=produce).start()
    got = []
    with pytest.raises(OSError, match="the engine broke"):
        async for item in stream:
            got.append(item)
    assert got == ["a"]


async def test_a_reader_that_leaves_early_stops_the_producer():
    stream: ThreadStream[int] = ThreadStream()
    made = []

    def produce() -> None:
        for i in range(10_000):
            if stream.stop.is_set():
                break
            made.append(i)
            stream.put(i)
            threading.Event().wait(0.001)
        stream.end()

    worker = threading.Thread(target=produce)
    worker.start()
    async for item in stream:
        if item == 3:
            break
    stream.close()
    await asyncio.to_thread(worker.join, 5)
    assert not worker.is_alive() and len(made) < 100  # it stopped at once, not after 10,000


def test_a_producer_outliving_the_loop_does_not_raise():
    async def make() -> ThreadStream[int]:
        return ThreadStream()

    stream = asyncio.run(make())  # the loop is closed now, as at the process's exit
    stream.put(1)
    stream.end()
