"""A bounded inbox: data waits by priority, control jumps the queue, stale chat is let go."""

from __future__ import annotations

import asyncio
import heapq

from runtime.events import InputEvent, InputKind, Priority
from runtime.ports import Clock


class Inbox:
    """Holds inputs until the director takes them.

    When full, the lowest-priority oldest item is dropped to make room; a new item that ranks
    below everything waiting is refused instead. CRITICAL items are never dropped. Chat older than `max_age`
    seconds is dropped when it would be taken: answering a question from two minutes ago live is
    worse than not answering it.
    """

    def __init__(self, clock: Clock, capacity: int = 64, max_age: float = 120.0) -> None:
        if capacity < 1:
            raise ValueError("inbox capacity must be at least 1")
        self.clock = clock
        self.capacity = capacity
        self.max_age = max_age
        self.dropped = 0
        self._heap: list[tuple[int, int, InputEvent]] = []  # (-priority, order, event)
        self._control: asyncio.Queue[InputEvent] = asyncio.Queue()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, event: InputEvent) -> bool:
        """Add an input; False if it was refused because the inbox is full of better ones."""
        if event.is_control:
            self._control.put_nowait(event)
            return True
        if len(self._heap) >= self.capacity:
            # the lowest priority, and among those the oldest, makes room
            worst = min(self._heap, key=lambda e: (-e[0], e[1]))
            if worst[2].priority is Priority.CRITICAL or event.priority < worst[2].priority:
                if event.priority is not Priority.CRITICAL:
                    self.dropped += 1
                    return False
            else:
                self._heap.remove(worst)
                heapq.heapify(self._heap)
                self.dropped += 1
        heapq.heappush(self._heap, (-event.priority, event.order, event))
        self._ready.set()
        return True

    def peek_priority(self) -> Priority | None:
        return Priority(-self._heap[0][0]) if self._heap else None

    async def get(self) -> InputEvent:
        """The next input to answer: highest priority first, then oldest."""
        while True:
            while self._heap:
                _, _, event = heapq.heappop(self._heap)
                if self._stale(event):
                    self.dropped += 1
                    continue
                if not self._heap:
                    self._ready.clear()
                return event
            self._ready.clear()
            await self._ready.wait()

    async def get_control(self) -> InputEvent:
        return await self._control.get()

    def _stale(self, event: InputEvent) -> bool:
        return (
            event.kind is InputKind.CHAT
            and event.priority < Priority.HIGH
            and self.clock.now() - event.received_at > self.max_age
        )
