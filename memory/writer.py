"""The one writer of a running character's database. Every write is queued here and committed in
order, in batches, by one task; whoever needs to know that a write is stored awaits its future.

A full disk does not stop the character: the writes stay queued and are tried again with a
backoff (0.5 s doubling to 30 s), whoever awaits one hears at once that it is not stored yet, and
when space returns everything still queued is committed. The queue is bounded (MAX_PENDING
writes): past that, the oldest are dropped, counted and logged, so memory stays flat however long
the disk stays full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from runtime.ports import Clock, MonotonicClock

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # writes kept while the disk is full (a chat line is one to four)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0


class StoreFull(sqlite3.OperationalError):
    """A write could not be stored yet (the disk is full); it stays queued and is tried again."""


@dataclass(slots=True)
class Write:
    sql: str
    params: tuple[Any, ...] | list[tuple[Any, ...]]  # a list: executemany
    done: asyncio.Future[None] | None = None


class Writer:
    def __init__(self, db: aiosqlite.Connection, path: Path, batch: int = 256, limit: int = MAX_PENDING,
                 clock: Clock | None = None) -> None:
        self.db, self.path, self.batch, self.limit = db, path, batch, limit
        self.clock = clock or MonotonicClock()
        self.pending: deque[Write] = deque()
        self.dropped = 0  # writes given up while the disk was full, since it last was not
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._full_since: float | None = None
        self._backoff = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="memory-writer")

    async def aclose(self) -> None:
        """Commit what is queued (unless the disk is full), then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    @property
    def full(self) -> bool:
        return self._full_since is not None

    def put(self, sql: str, params: tuple[Any, ...] | list[tuple[Any, ...]] = (), wait: bool = False
            ) -> asyncio.Future[None] | None:
        """Queue a write; with `wait`, a future that resolves once it is committed (or raises
        StoreFull at once while the disk is full: the write itself stays queued)."""
        done = asyncio.get_running_loop().create_future() if wait else None
        if done is not None and self.full:
            done.set_exception(StoreFull("not stored yet: the disk is full"))
            done.exception()  # the log says it once; a future no one awaits is not an error each
        self.pending.append(Write(sql, params, done))
        self._trim()
        self._wake.set()
        return done

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (StoreFull while the disk is full)."""
        done = self.put("SELECT 1", (), wait=True)
        assert done is not None
        await done

    def _trim(self) -> None:
        over = len(self.pending) - self.limit
        if over <= 0:
            return
        if not self.dropped:
            log.error("the disk has been full too long: the oldest writes are dropped",
                      extra={"database": str(self.path), "kept": self.limit})
        for _ in range(over):
            _settle([self.pending.popleft()], StoreFull("dropped: the disk stayed full"))
        self.dropped += over

    async def _run(self) -> None:
        while True:
            if not self.pending:
                if self._stopping.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            writes = [self.pending.popleft() for _ in range(min(self.batch, len(self.pending)))]
            try:
                await self._commit(writes)
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self.db.rollback()
                if getattr(exc, "sqlite_errorname", "") != "SQLITE_FULL":
                    # fail loudly for the writes that awaited, keep the writer alive for the rest
                    log.exception("database write failed", extra={"database": str(self.path)})
                    _settle(writes, exc)
                    continue
                self.pending.extendleft(reversed(writes))
                if self._stopping.is_set():
                    log.error("the disk is still full at shutdown: writes were not stored",
                              extra={"database": str(self.path), "writes": len(self.pending)})
                    _settle(self.pending, exc)
                    self.pending.clear()
                    return
                self._trim()
                await self._hold(exc)
                continue
            if self._full_since is not None:
                log.warning("the database is writable again: the writes held are stored from now on",
                            extra={"database": str(self.path), "dropped": self.dropped,
                                   "full_s": round(time.monotonic() - self._full_since, 1)})
                self._full_since, self._backoff, self.dropped = None, 0.0, 0
            _settle(writes, None)

    async def _commit(self, writes: list[Write]) -> None:
        for w in writes:
            if isinstance(w.params, list):
                await self.db.executemany(w.sql, w.params)
            else:
                await self.db.execute(w.sql, w.params)
        await self.db.commit()

    async def _hold(self, exc: sqlite3.Error) -> None:
        """The disk is full: say so once, tell everyone waiting, and wait (less once stopping)."""
        if self._full_since is None:
            self._full_since = time.monotonic()
            log.error("the disk is full: writes are held in memory and retried; free some space",
                      extra={"database": str(self.path), "error": str(exc)})
            _settle(self.pending, StoreFull(f"not stored yet: {exc}"))
        self._backoff = min(max(self._backoff * 2, BACKOFF_MIN_S), BACKOFF_MAX_S)
        pause = asyncio.ensure_future(self.clock.sleep(self._backoff))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({pause, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pause.cancel()
            stop.cancel()


def _settle(writes: Iterable[Write], error: BaseException | None) -> None:
    """Resolve the futures of writes someone awaits: stored (error None), or not."""
    for w in writes:
        if w.done is not None and not w.done.done():
            if error is None:
                w.done.set_result(None)
            else:
                w.done.set_exception(error)
                w.done.exception()  # said in the log already: no "never retrieved" for each
