"""A chat flood: 1,000 messages a second for 30 s into a running character with the tiny model.

Shows that every message is logged (counted in the database), the backlog stays within its bound,
memory stays flat, the director picks the next message quickly (decision time p99; and the cost of
taking in one message), and each reply answers a message younger than the maximum chat age.

    python bench/chat_flood.py --rate 1000 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_model import tiny  # noqa: E402
from persona_model.generation import Sampling  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from runtime.app import build  # noqa: E402
from runtime.config import load  # noqa: E402
from runtime.events import InputEvent, InputKind  # noqa: E402

WORDS = "hello stream game nice play win lose wow chat song dance cute fun what why how".split()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def message(rng: random.Random, i: int) -> tuple[str, str]:
    author = f"viewer{rng.randrange(5000)}"
    roll = rng.random()
    if roll < 0.15:
        return author, "POGGERS " * rng.randint(1, 3)  # copy-paste spam
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
    if roll < 0.25:
        text = "komorebi " + text
    if roll > 0.9:
        text += "?"
    return author, f"{text} #{i}"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000, help="messages per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--models-dir", default="~/.cache/omoide/bench")
    args = ap.parse_args()
    model_path = Path(args.models_dir).expanduser() / "tiny"
    if not (model_path / "config.json").exists():
        tiny.build(model_path)
    work = Path(tempfile.mkdtemp(prefix="omoide-flood-"))
    (work / "config.toml").write_text(
        f'[memory]\ndatabase = "{work / "flood.db"}"\n[audio]\noutput = "silent"\n[avatar]\nenabled = false\n'
        '[chat.console]\nenabled = false\n[persona]\nname = "Komorebi"\n[inbox]\ncapacity = 64\n'
        "max_chat_age_s = 20.0\n"
    )
    config = load(work / "config.toml", env={})
    model = LocalPersonaModel.load(model_path, name="tiny", sampling=Sampling(max_new_tokens=40, seed=1))
    app = await build(config, model=model, console=False)
    director = app.director
    records: list = []
    director.on_turn = records.append
    runner = asyncio.create_task(director.run(), name="flood-director")
    rng = random.Random(0)
    submit_s: list[float] = []
    backlog: list[int] = []
    memory: list[float] = [rss_mb()]
    sent = 0
    tick = 0.01
    per_tick = max(1, int(args.rate * tick))
    t0 = time.perf_counter()
    next_sample = t0 + 1.0
    while (now := time.perf_counter()) - t0 < args.seconds:
        for _ in range(per_tick):
            author, text = message(rng, sent)
            event = InputEvent(InputKind.CHAT, text, "twitch", director.cast.clock.now(), author,
                               meta={"event": "message", "untrusted": True})
            s = time.perf_counter()
            director.submit(event)
            submit_s.append(time.perf_counter() - s)
            sent += 1
        backlog.append(len(director.inbox))
        if now >= next_sample:
            memory.append(rss_mb())
            next_sample += 1.0
        await asyncio.sleep(max(0.0, t0 + (sent / args.rate) - time.perf_counter()))
    flood_s = time.perf_counter() - t0
    await app.memory.flush()
    logged = sqlite3.connect(app.memory.path).execute(
        "select count(*) from inputs where source = 'twitch'").fetchone()[0]
    director.stop()
    await runner
    await app.aclose()

    decisions = sorted(director.inbox.decision_s)
    ages = [r.timings["prompt_ready"] for r in records if "prompt_ready" in r.timings]
    submits = sorted(submit_s)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    print(f"\n{sent} messages in {flood_s:.1f} s ({sent / flood_s:.0f}/s), tiny model, {len(records)} replies")
    print(f"logged in the database: {logged} of {sent}")
    print(f"backlog: max {max(backlog)} (capacity {config.inbox.capacity}); merged {director.inbox.merged},"
          f" dropped {director.inbox.dropped}")
    marks = [m for m in (1, 5, 10, 20) if m < len(memory)]
    print(f"memory (RSS, MB): start {memory[0]:.0f}, "
          + ", ".join(f"{m} s {memory[m]:.0f}" for m in marks) + f", end {memory[-1]:.0f}, max {max(memory):.0f}")
    print(f"director decision (pick the next input): median {statistics.median(decisions) * 1000:.3f} ms,"
          f" p99 {pct(decisions, 0.99):.3f} ms, max {decisions[-1] * 1000:.3f} ms over {len(decisions)} picks")
    print(f"taking in one message (screen, log, score, queue): median {statistics.median(submits) * 1e6:.0f} us,"
          f" p99 {pct(submits, 0.99):.3f} ms, p99.9 {pct(submits, 0.999):.3f} ms,"
          f" max {submits[-1] * 1000:.1f} ms")
    print(f"age of the answered message when its prompt was ready: max {max(ages):.2f} s"
          f" (maximum chat age {config.inbox.max_chat_age_s:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main())
