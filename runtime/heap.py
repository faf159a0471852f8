"""The process's heap, kept flat over a long stream (glibc only; elsewhere each call does nothing).

A model, its tokenizer, the database and the voices allocate from worker threads; memory freed
into glibc's many per-thread arenas stays fragmented, and a long reply's tensors freed below live
ones stay inside the heap. Two arenas and a trim every minute keep the process's size following
what it uses (docs/benchmarks.md, soak).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
from typing import Any

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
HEAP_TRIM_S = 60.0  # how often a running character hands free heap memory back


@functools.cache
def _libc(name: str) -> Any:
    """A function of the C library this process runs on, or None where it has none by that name
    (looked up once: the heap trim asks every minute)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):  # Windows cannot open the process itself by None
        return None


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process, as `MALLOC_ARENA_MAX=2` would, unless the
    environment already sets it. Call it first thing, before threads allocate.

    glibc gives threads arenas of their own (up to 8 per core); a model, its tokenizer, the
    database and the voices each allocate from worker threads, and memory freed into many arenas
    stays fragmented: over a long stream RSS climbs in steps (docs/benchmarks.md, soak). Two
    arenas keep fewer of those steps; the threads rarely contend for them, as one generation runs
    at a time. True if the cap was set; False where the C library is not glibc or the user chose.
    """
    if "MALLOC_ARENA_MAX" in os.environ or (mallopt := _libc("mallopt")) is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, arenas))  # glibc answers 1; musl's stub answers 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_bytes() -> tuple[int, int] | None:
    """(bytes malloc has handed out, bytes it holds free) from glibc ≥ 2.33, else None."""
    if (info := _libc("mallinfo2")) is None:
        return None
    info.restype = _MallInfo2
    m = info()
    return m.uordblks + m.hblkhd, m.fordblks


def trim_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); False elsewhere."""
    if (trim := _libc("malloc_trim")) is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    return bool(trim(0))


async def keep_heap_trimmed(every_s: float = HEAP_TRIM_S) -> None:
    """Beside the turns: free memory that glibc would keep inside its heaps (a long reply's
    tensors, freed below live ones) goes back to the system every minute, so the process's size
    follows what it uses (docs/benchmarks.md, soak)."""
    if _libc("malloc_trim") is None:
        return
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(trim_heap)
