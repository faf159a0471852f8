"""How long a turn's recall stands before its prompt, as it was until 2026-12-05 (MiniLM in torch
embeds the query, then the store's reads: the viewer's profile, pinned memories, the viewer's own
facts) and as it is now (the query embedded under onnxruntime, the reads beside it), on a real
store; each way's parts apart.

The store is a real SQLite file with the bundled all-MiniLM-L6-v2 embedder: twelve viewers, each
with a profile and the facts they told (as `learn` keeps them from chat), and the viewer lines of
tests/data/viewer_lines.txt as memories, 300 in all. Each trial is a viewer's question recall has
not seen, asked every way in turn (the order alternates); both ways must recall the same
memories. "Ahead": `recall_ahead` called as the line arrives and recall asked at once, as when
the line starts a turn with nothing else waiting (the typed trials of bench/real_latency.py).

    python bench/recall_path.py               # 60 trials a way, about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memory.embed import Embedder  # noqa: E402
from memory.recall import Recall  # noqa: E402
from memory.store import SqliteMemory  # noqa: E402
from runtime import bundled  # noqa: E402
from runtime.events import InputEvent, InputKind, Memory  # noqa: E402

VIEWERS = ["mika", "juno_", "pixelfox", "tea_time", "ravenclaw99", "bun", "orbit", "leafy", "sol", "kumo",
           "ferris", "nox"]
FACTS = ["my cat is called {}", "my favourite game is {}", "I live in {}", "I work as a {}", "my dog is called {}"]
VALUES = ["Miso", "Celeste", "Lisbon", "baker", "Pebble", "Hades", "Osaka", "nurse", "Tofu", "Tetris"]
QUESTIONS = ["do you remember my cat's name?", "what's my favourite game?", "where do I live?",
             "what do I do for work?", "what is my dog called?", "did I tell you about my pets?"]


WAYS = {  # name: (embedding runtime, how recall runs)
    "embedding alone, torch": ("torch", "alone"),
    "embedding alone, onnxruntime": ("onnx", "alone"),
    "recall before: torch, reads after": ("torch", "after"),
    "torch, reads beside the embedding": ("torch", "beside"),
    "recall now: onnxruntime, reads beside": ("onnx", "beside"),
    "now, embedding started ahead": ("onnx", "ahead"),
}


def chat(viewer: str, text: str) -> InputEvent:
    return InputEvent(InputKind.CHAT, text, "twitch", 0.0, viewer, meta={"user_id": viewer})


async def before(recall: Recall, text: str, k: int, viewer: str) -> list[Memory]:
    """Recall as it was: the reads, then the embedding, then the ranking (which read the viewer's
    facts itself)."""
    found: list[Memory] = []
    profile = await recall._profile(viewer)
    if profile is not None:
        found.append(profile)
    found += [Memory(r.id, r.text, 1.0) for r in await recall._rows(
        "pinned = 1 AND superseded_by IS NULL ORDER BY importance DESC LIMIT ?", (k,))]
    ranked = await recall.ranked_by_vector(await recall._query(text), k, viewer)
    unique: dict[int, Memory] = {}
    for m in found + ranked:
        unique.setdefault(m.id, m)
    return list(unique.values())[: k + 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--k", type=int, default=3, help="memories recalled (config.toml: recall_k = 3)")
    args = parser.parse_args()
    lines = [s.strip() for s in (ROOT / "tests/data/viewer_lines.txt").read_text().splitlines()
             if s.strip() and not s.startswith("#")]
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteMemory.open(Path(tmp) / "memory.db", encoder=lambda: Embedder(bundled.locate("embedding")))
        try:
            for i, who in enumerate(VIEWERS):
                for j, fact in enumerate(FACTS):
                    store.learn(chat(who, fact.format(VALUES[(i + j) % len(VALUES)]) + "!"))
            n = 0
            while n < 300 - len(VIEWERS) * len(FACTS):
                for line in lines:
                    await store.add_memory(f"{line} ({n})", "bench")
                    n += 1
            await store.flush()
            await asyncio.wait_for(store.index_ready.wait(), 120)
            while store.index is None or len(store.index) < 300:  # the indexer embeds them in the background
                await asyncio.sleep(0.2)
            recall = store.recaller
            made = {"onnx": recall.encoder, "torch": Embedder(bundled.locate("embedding"), runtime="torch")}
            assert made["onnx"] is not None and made["onnx"].runtime == "onnx"
            times: dict[str, list[float]] = {name: [] for name in WAYS}
            for warm in range(5):
                for encoder in made.values():
                    recall.encoder = encoder
                    await store.recall(f"warm up {warm}", args.k, "twitch:mika")
            for t in range(args.trials):
                who = f"twitch:{VIEWERS[t % len(VIEWERS)]}"
                text = f"{QUESTIONS[t % len(QUESTIONS)]} ({t})"
                ways = list(WAYS) if t % 2 == 0 else list(WAYS)[::-1]
                for name in ways:
                    runtime, how = WAYS[name]
                    recall.encoder = encoder = made[runtime]
                    query = f"{text} {name}"
                    s = time.perf_counter()
                    if how == "alone":
                        await asyncio.to_thread(encoder.encode, [query])
                    elif how == "after":
                        await before(recall, query, args.k, who)
                    else:
                        if how == "ahead":
                            store.recall_ahead(query)
                        await store.recall(query, args.k, who)
                    times[name].append(time.perf_counter() - s)
                recall.encoder = made["onnx"]
                now = [m.id for m in await store.recall(text, args.k, who)]
                recall.encoder = made["torch"]
                assert now == [m.id for m in await before(recall, text, args.k, who)], \
                    f"the two ways recalled different memories for {text!r}"
        finally:
            await store.aclose()
    print(f"recall of {args.k} memories (and the viewer's profile) from 300, {args.trials} trials a way")
    print(f"{'ms':40} {'median':>8} {'p90':>8}")
    for name, xs in times.items():
        xs = sorted(xs)
        print(f"{name:40} {statistics.median(xs) * 1000:8.1f} {xs[int(0.9 * len(xs))] * 1000:8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
