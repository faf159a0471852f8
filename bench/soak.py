"""A night live, compressed: the whole runtime as config.toml builds it (the bundled
SmolLM2-135M-Instruct, the Piper voice, recall by MiniLM, history, reflection; a real SQLite file,
real avatar and game servers on 127.0.0.1, silent speakers pacing in real time) driven for a
while with mixed load, while its health is sampled. `--tiny` runs the stripped configuration
instead: the tiny model, espeak-ng, recall by words, reflection every 8 turns.

Load: chat from 60 viewers at a streaming rate (0.5 lines a second, Poisson) with a flood of 300
lines every 5 minutes (a quarter of the run, if shorter); a game (the Python game SDK, over the real socket) that keeps an action
registered, sends context, and forces an action every 45 s; memory reflection as configured; a new
adapter version activated every 10 minutes (a third of the run, if shorter) (swapped in live between turns); avatar clients
connecting, listening a while and leaving, and one that never reads (dropped as too slow).

Every 30 s it samples: turns completed, p50/p99 time to first audio of the turns since the last
sample, the process's RSS and open file descriptors, and errors logged. At the end: the database's
row counts against the inputs sent (every input must be stored), and whether RSS or descriptors
grew after warm-up (the first fifth of the run).

    python bench/soak.py                   # 30 minutes, the shipped config.toml
    python bench/soak.py --tiny            # the stripped configuration (tiny model, no embedder)
    python bench/soak.py --minutes 5       # a quick one
    python bench/soak.py --trace           # also: what Python allocated after warm-up, by line
    python bench/soak.py --default-arenas  # without the malloc arena cap `omoide run` sets
    python bench/soak.py --no-trim         # without handing free heap memory back every minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import websockets  # noqa: E402
from omoide_game import Game  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from persona_model import tiny  # noqa: E402
from runtime.app import build  # noqa: E402
from runtime.config import Config, load  # noqa: E402
from runtime.events import InputEvent, InputKind, Stage, TurnRecord  # noqa: E402
from runtime.heap import cap_malloc_arenas, heap_bytes, keep_heap_trimmed, trim_heap  # noqa: E402
from runtime.models import adapter_registry, base_of, model_path  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from replies import bench_config  # noqa: E402


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.name}: {record.getMessage()} {getattr(record, 'error', '')}".strip())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_file_mb() -> float:
    """The part of RSS that is files mapped in (model weights read through mmap, libraries)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def shipped(path: Path, folder: Path) -> Config:
    """config.toml as a user runs it; only what must differ on a bench machine changes: the files
    in `folder`, silent speakers, the servers on free ports, the game API on."""
    return bench_config(path, folder, avatar={"enabled": True, "port": 0, "control_token_file":
                                              str(folder / "avatar_control.token")},
                        game={"enabled": True, "port": 0, "result_timeout_s": 10.0},
                        sliders={"file": str(folder / "sliders.json"), "cache": str(folder / "steering")})


def stripped(folder: Path, model: Path) -> Config:
    path = folder / "config.toml"
    path.write_text(f"""
[persona]
name = "Soaky"
description = "A cheerful test character on a long stream."
[model]
id = "{model}"
download = false
max_new_tokens = 40
[audio]
output = "silent"
[avatar]
port = 0
[game]
enabled = true
port = 0
result_timeout_s = 10.0
[chat.console]
enabled = false
[memory]
database = "{folder / 'omoide.db'}"
embedding_model = "none"
[memory.reflection]
enabled = true
every_turns = 8
[learning]
adapters = "{folder / 'adapters'}"
""")
    return load(path, env={})


def new_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA for `base`, made in another process (as `omoide train` makes them): loading a second
    copy of the model here would be the soak's own memory, not the runtime's."""
    child = multiprocessing.get_context("spawn").Process(target=_make_adapter, args=(base, out, seed))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"making adapter {out} failed ({child.exitcode})")
    return out


def _make_adapter(base: Path, out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(out)


class Load:
    def __init__(self, app: Any, seconds: float, name: str) -> None:
        self.app = app
        self.name = name
        self.seconds = seconds
        self.sent: list[str] = []  # ids of inputs submitted
        self.stop = asyncio.Event()
        self.counts = {"chat": 0, "flood": 0, "forces": 0, "actions": 0, "avatar_sessions": 0,
                       "slow_dropped": 0, "adapters": 0}

    def say(self, text: str, viewer: int) -> None:
        event = InputEvent(InputKind.CHAT, text, "twitch", self.app.director.cast.clock.now(), f"viewer{viewer}",
                           meta={"user_id": str(1000 + viewer), "event": "message"})
        self.sent.append(event.id)
        self.app.director.submit(event)

    async def nap(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    async def chat(self) -> None:
        rng = random.Random(1)
        lines = ["hi {n}!", "what are you playing?", "do you like cats?", "my favourite food is ramen",
                 "how was your day?", f"{self.name}, sing a song!", "lol", "what is your name?", "I just got home"]
        while not self.stop.is_set():
            await self.nap(rng.expovariate(0.5))
            self.say(rng.choice(lines).replace("{n}", str(rng.randint(1, 99))), rng.randint(1, 60))
            self.counts["chat"] += 1

    async def floods(self) -> None:
        while not self.stop.is_set():
            await self.nap(min(300.0, self.seconds / 4))
            if self.stop.is_set():
                break
            for i in range(300):
                self.say(f"SPAM {i} pog pog", i % 60 + 1)
                self.counts["flood"] += 1
                if i % 30 == 0:
                    await asyncio.sleep(0.2)

    async def game(self) -> None:
        assert self.app.games is not None
        game = Game("Soak Game", f"ws://127.0.0.1:{self.app.games.port}")

        @game.action("wave", "Wave at someone in chat", {"type": "object", "properties": {
            "to": {"type": "string", "enum": ["chat", "mods"]}}, "required": ["to"]})
        async def wave(data: Any) -> str:
            self.counts["actions"] += 1
            return f"waved at {data['to']}"

        async with game:
            runner = asyncio.create_task(game.run())
            n = 0
            while not self.stop.is_set():
                await game.context(f"Round {n}: the score is {n * 3} to {n * 2}.", silent=n % 2 == 0)
                await self.nap(45)
                if self.stop.is_set():
                    break
                await game.force("Someone asked for a wave. Wave!", ["wave"], state=f"round {n}")
                self.counts["forces"] += 1
                n += 1
            game.stop()
            await runner

    async def avatars(self) -> None:
        rng = random.Random(2)
        url = f"ws://127.0.0.1:{self.app.avatar.port}"
        while not self.stop.is_set():
            try:
                async with websockets.connect(url, max_size=None) as ws:
                    self.counts["avatar_sessions"] += 1
                    deadline = time.monotonic() + rng.uniform(5, 30)
                    while time.monotonic() < deadline and not self.stop.is_set():
                        try:
                            await asyncio.wait_for(ws.recv(), 1.0)
                        except TimeoutError:
                            pass
            except (OSError, websockets.ConnectionClosed):
                pass
            await self.nap(rng.uniform(1, 10))

    async def slow_avatar(self) -> None:
        """Connects and never reads: the server must drop it, never wait for it."""
        url = f"ws://127.0.0.1:{self.app.avatar.port}"
        while not self.stop.is_set():
            try:
                async with websockets.connect(url, max_size=None, max_queue=1) as ws:
                    ws.transport.pause_reading()
                    await self.nap(120)
            except (OSError, websockets.ConnectionClosed):
                pass
            self.counts["slow_dropped"] += 1

    async def adapters(self, base: Path, folder: Path, config: Config) -> None:
        reg = adapter_registry(config)
        n = 0
        while not self.stop.is_set():
            await self.nap(min(600.0, self.seconds / 3))
            if self.stop.is_set():
                break
            n += 1
            out = await asyncio.to_thread(new_adapter, base, folder / f"adapter{n}", n)
            version = reg.register(out, parent=None, window=f"w{n:04d}", base=base_of(config), passed=True,
                                   metrics={})
            reg.activate(version.version)
            self.counts["adapters"] += 1


async def soak(minutes: float, sample_s: float, config_path: Path | None, trace: bool = False,
               trim: bool = True) -> None:
    errors = Errors()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if config_path is None:
            base = tiny.build(folder / "tiny")
            config = stripped(folder, base)
        else:
            config = shipped(config_path, folder)
            base = model_path(config)
        print(f"configuration: {config_path or 'stripped (--tiny)'}; model {base}; embedder"
              f" {config.memory.embedding_model}; voice {config.tts.engine}; reflection every"
              f" {config.memory.reflection.every_turns} turns", flush=True)
        app = await build(config, console=False)
        # only what is measured is kept (holding every TurnRecord would itself grow the heap)
        firsts_all: list[float] = []
        done = {"turns": 0}

        def on_turn(record: TurnRecord) -> None:
            done["turns"] += 1
            if Stage.FIRST_AUDIO in record.timings:
                firsts_all.append(record.timings[Stage.FIRST_AUDIO] * 1000)

        app.director.on_turn = on_turn
        if not trim:
            app.director.background = tuple(j for j in app.director.background if j is not keep_heap_trimmed)
        director = asyncio.create_task(app.director.run(), name="director")
        seconds = minutes * 60
        load_ = Load(app, seconds, app.director.cast.persona.name)
        tasks = [asyncio.create_task(t) for t in (load_.chat(), load_.floods(), load_.game(), load_.avatars(),
                                                   load_.slow_avatar(), load_.adapters(base, folder, config))]
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        if trace:
            tracemalloc.start(12)
        warm_snapshot: tracemalloc.Snapshot | None = None
        seen = 0
        print(f"soak: {minutes:g} minutes; a sample every {sample_s:g} s", flush=True)
        print(f"{'min':>6}{'turns':>7}{'first audio p50':>17}{'p99':>9}{'RSS MB':>9}{'of files':>9}{'heap used':>10}{'free':>6}"
              f"{'fds':>6}{'errors':>8}", flush=True)
        while (elapsed := time.monotonic() - started) < seconds:
            await asyncio.sleep(min(sample_s, seconds - elapsed))
            if director.done():
                print(f"the director stopped: {director.exception()!r}")
                break
            firsts = firsts_all[seen:]
            seen = len(firsts_all)
            sample = {"min": (time.monotonic() - started) / 60, "turns": done["turns"], "p50": pct(firsts, 0.5),
                      "p99": pct(firsts, 0.99), "rss": rss_mb(), "file": rss_file_mb(), "fds": fds(),
                      "errors": len(errors.seen)}
            used, free = heap_bytes() or (0, 0)  # what glibc's malloc has handed out, and holds free
            sample.update(used=used / 2**20, free=free / 2**20)
            samples.append(sample)
            if trace and warm_snapshot is None and sample["min"] >= minutes / 5:
                warm_snapshot = tracemalloc.take_snapshot()
            print(f"{sample['min']:>6.1f}{sample['turns']:>7}{sample['p50']:>15.0f}ms{sample['p99']:>7.0f}ms"
                  f"{sample['rss']:>9.1f}{sample['file']:>9.1f}{sample['used']:>10.1f}{sample['free']:>6.1f}{sample['fds']:>6}"
                  f"{sample['errors']:>8}", flush=True)
        if warm_snapshot is not None:
            grown = tracemalloc.take_snapshot().compare_to(warm_snapshot, "traceback")
            print("\nPython allocations grown since warm-up (largest first):")
            for stat in grown[:12]:
                frames = [f"{f.filename.split('site-packages/')[-1].replace(str(ROOT) + '/', '')}:{f.lineno}"
                          for f in stat.traceback[-4:]]
                print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {' < '.join(reversed(frames))}")
        load_.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        crashed = director.done()
        app.director.stop()
        await asyncio.wait_for(director, 120)
        await app.memory.flush()
        swaps = len(getattr(app.director.cast.model, "swaps", []))
        await app.aclose()
        db = sqlite3.connect(config.path(config.memory.database))
        stored = {i for (i,) in db.execute("SELECT id FROM inputs")}
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM turns GROUP BY status").fetchall())
        memories = db.execute("SELECT COUNT(*) FROM memories").fetchone()[0]
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM inputs GROUP BY kind").fetchall())
        lost = [i for i in load_.sent if i not in stored]
        warm = [s for s in samples if s["min"] >= minutes / 5] or samples
        print()
        print(f"sent: {json.dumps(load_.counts)}")
        print(f"stored: inputs {len(stored)} {json.dumps(kinds)}; turns {json.dumps(statuses)}; memories {memories};"
              f" adapter swaps {swaps}")
        print(f"chat inputs sent {len(load_.sent)}, stored {len(load_.sent) - len(lost)}, lost {len(lost)}")
        print(f"turns {done['turns']}; first audio p50 {pct(firsts_all, 0.5):.0f} ms, p99 {pct(firsts_all, 0.99):.0f} ms")
        print(f"after warm-up ({warm[0]['min']:.1f} min on): RSS {warm[0]['rss']:.1f} -> {warm[-1]['rss']:.1f} MB"
              f" (max {max(s['rss'] for s in warm):.1f}; of files {warm[0]['file']:.1f} -> {warm[-1]['file']:.1f}), fds {warm[0]['fds']} -> {warm[-1]['fds']}"
              f" (max {max(s['fds'] for s in warm)}); heap in use {warm[0]['used']:.1f} -> {warm[-1]['used']:.1f} MB")
        took = time.perf_counter()
        trim_heap()
        print(f"one malloc_trim at the end: {(time.perf_counter() - took) * 1000:.1f} ms")
        print(f"errors logged: {len(errors.seen)}; director crashed: {crashed}")
        for line in sorted(set(errors.seen))[:10]:
            print(f"  {line[:200]}")
        if len(warm) >= 4:
            half = len(warm) // 2
            early, late = statistics.mean(s["rss"] for s in warm[:half]), statistics.mean(s["rss"] for s in warm[half:])
            print(f"RSS mean, first half of the warm run {early:.1f} MB, second half {late:.1f} MB"
                  f" ({(late - early) / early * 100:+.1f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--config", type=Path, default=ROOT / "config.toml", help="the configuration soaked")
    ap.add_argument("--tiny", action="store_true",
                    help="the stripped configuration: the tiny model, espeak-ng, no embedding model")
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--trace", action="store_true", help="trace Python allocations (slower)")
    ap.add_argument("--default-arenas", action="store_true",
                    help="leave glibc's malloc arenas as they are (omoide run caps them at 2)")
    ap.add_argument("--no-trim", action="store_true",
                    help="never hand free heap memory back (omoide run does every minute)")
    args = ap.parse_args()
    capped = False if args.default_arenas else cap_malloc_arenas()  # first, as `omoide run` does
    print(f"malloc arenas: {'capped at 2' if capped else os.environ.get('MALLOC_ARENA_MAX', 'default')}")
    asyncio.run(soak(args.minutes, args.sample_s, None if args.tiny else args.config, args.trace,
                     trim=not args.no_trim))


if __name__ == "__main__":
    main()
