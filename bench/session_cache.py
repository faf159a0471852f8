"""How much of each prompt the prefix cache reuses over a long scripted Twitch session, on the
default configuration (config.toml as it is: the bundled SmolLM2-135M-Instruct and its card,
recall with the MiniLM embedder, history, reflection, the viewers' profiles), and what that does
to the time to first token.

Twelve viewers chat in turn: greetings, questions from tests/data/viewer_lines.txt, facts about
themselves ("my cat is called Miso") and questions about those facts later, so memories and
profiles change from turn to turn as on a live channel. Each line is answered before the next
is sent, and the next is sent once the model is idle: she finishes speaking before she answers
again, and her last words take longer than the prompt preparation (speech plays on a clock 50x
faster than real time; what is said does not depend on it).

Per turn: prompt tokens, tokens reused from the cache (of those, prepared while the last reply
was spoken), and the model's time to first token (its generate() called -> first text). Then, on every
tenth turn's prompt, the first token without the cache (the same prompt computed whole), and
with greedy decoding the reply with the cache (the prompt before it generated, the next
prepared) against the reply without: they must be the same.

    python bench/session_cache.py              # 200 turns, about 25 minutes on 2 cores
    python bench/session_cache.py --turns 40   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from replies import bench_config, viewer_lines  # noqa: E402

from persona_model.generation import Sampling  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from runtime.app import build  # noqa: E402
from runtime.config import Config  # noqa: E402
from runtime.events import (  # noqa: E402
    ChatMessage,
    InputEvent,
    InputKind,
    Persona,
    Priority,
    Prompt,
    PromptContext,
    TurnRecord,
)
from tests.conftest import FastClock  # noqa: E402

VIEWERS = ["mika", "juno_", "pixelfox", "tea_time", "ravenclaw99", "bun", "orbit", "leafy", "sol", "kumo",
           "ferris", "nox"]
FACTS = [("my cat is called {}", ["Miso", "Tofu", "Biscuit", "Pebble"]),
         ("my favourite game is {}", ["Celeste", "Hades", "Tetris", "Stardew Valley"]),
         ("I live in {}", ["Lisbon", "Osaka", "Oslo", "Toronto"])]
ASKS = ["do you remember my cat's name?", "what's my favourite game?", "where do I live?"]


def script(turns: int, lines: list[str]) -> list[tuple[str, str]]:
    """(viewer, line): greetings, questions, facts and later questions about them."""
    out = []
    for i in range(turns):
        who = VIEWERS[i % len(VIEWERS)]
        rnd = i // len(VIEWERS)
        k = (i + rnd) % len(FACTS)
        if rnd == 0:
            text = f"hi Komorebi! {lines[i % len(lines)]}"
        elif rnd % 3 == 1:
            template, values = FACTS[k]
            text = template.format(values[(i + rnd) % len(values)]) + "!"
        elif rnd % 3 == 2:
            text = ASKS[(i + rnd - 1) % len(ASKS)]
        else:
            text = lines[(i * 7) % len(lines)]
        out.append((who, text))
    return out


async def session(config: Config, lines: list[tuple[str, str]]) -> tuple[list[TurnRecord], list[dict[str, float]], Any]:
    """The session's records and per-turn cache figures, and the App (its director stopped)."""
    app = await build(config, console=False, clock=FastClock(50))
    model = app.director.cast.model
    assert isinstance(model, LocalPersonaModel), "the default configuration runs the local backend"
    records: list[TurnRecord] = []
    stats: list[dict[str, float]] = []
    done = asyncio.Event()

    def on_turn(record: TurnRecord) -> None:
        s = model.last_stats
        records.append(record)
        stats.append({"prompt": s.prompt_tokens, "cached": s.cached_tokens, "prepared": s.prepared_tokens,
                      "ttft": s.pieces[0][0] - s.started_at if s.pieces else float("nan")})
        done.set()

    app.director.on_turn = on_turn
    task = asyncio.create_task(app.director.run(), name="bench-director")
    try:
        for i, (who, line) in enumerate(lines):
            done.clear()
            app.director.submit(InputEvent(InputKind.CHAT, line, "twitch", app.director.cast.clock.now(), who,
                                           Priority.NORMAL, meta={"untrusted": True,
                                                                  "user_id": str(1000 + VIEWERS.index(who))}))
            await done.wait()
            await asyncio.to_thread(model._worker.idle)  # she is still speaking her last words
            if (i + 1) % 20 == 0:
                r = stats[-20:]
                print(f"  turn {i + 1}: reused {sum(s['cached'] for s in r) / sum(s['prompt'] for s in r):.1%}"
                      f" of {statistics.mean(s['prompt'] for s in r):.0f} prompt tokens", flush=True)
    finally:
        app.director.stop()
        await task
    return records, stats, app


def history_of(record: TurnRecord) -> tuple[ChatMessage, ...]:
    """The conversation a turn's prompt carried (between the persona and the turn's own part)."""
    msgs = list(record.messages[1:])
    while msgs and msgs[-1].role == "system":  # the card's post-history note
        msgs.pop()
    msgs.pop()  # the input
    while msgs and msgs[-1].role == "system":  # memories and fired lore
        msgs.pop()
    return tuple(msgs)


async def first_token(model: LocalPersonaModel, prompt: Prompt) -> float:
    started = time.perf_counter()
    async for _ in model.stream(prompt):
        break
    return time.perf_counter() - started


async def without_cache(model: LocalPersonaModel, records: list[TurnRecord], every: int) -> list[tuple[float, int]]:
    """The first token of every `every`th turn's prompt computed whole."""
    model.prefix_cache = False
    model._kept.clear()
    out = []
    for r in records[every - 1::every]:
        prompt = Prompt(r.prompt, r.messages, 0)
        out.append((await first_token(model, prompt), len(model.tokenizer(r.prompt, add_special_tokens=False)["input_ids"])))
    model.prefix_cache = True
    return out


async def greedy_same(model: LocalPersonaModel, records: list[TurnRecord], persona: Persona, every: int) -> tuple[int, int]:
    """Greedy replies with the cache (the turn before generated, this one's start prepared)
    against the same prompts computed whole: how many of the checked pairs are the same."""
    sampling = model.sampling
    model.sampling = Sampling(max_new_tokens=24, temperature=0)
    same = checked = 0
    try:
        for i in range(every - 1, len(records) - 1, every):
            before, after = records[i], records[i + 1]
            model.prefix_cache = True
            model._kept.clear()
            async for _ in model.stream(Prompt(before.prompt, before.messages, 0)):
                pass
            model.prepare(PromptContext(persona, (), history_of(after)))
            await asyncio.to_thread(model._worker.idle)
            cached = "".join([p async for p in model.stream(Prompt(after.prompt, after.messages, 0))])
            model.prefix_cache = False
            model._kept.clear()
            whole = "".join([p async for p in model.stream(Prompt(after.prompt, after.messages, 0))])
            same += cached == whole
            checked += 1
    finally:
        model.sampling, model.prefix_cache = sampling, True
    return same, checked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "config.toml"))
    p.add_argument("--turns", type=int, default=200)
    p.add_argument("--every", type=int, default=10, help="check every n-th turn without the cache")
    args = p.parse_args()
    lines = script(args.turns, viewer_lines(ROOT / "tests" / "data" / "viewer_lines.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(args.config, Path(tmp))
        started = time.monotonic()

        async def run() -> None:
            records, stats, app = await session(config, lines)
            model = app.director.cast.model
            took = time.monotonic() - started
            failed = [dataclasses.asdict(r)["status"] for r in records if str(r.status) != "complete"]
            ttft = [s["ttft"] for s in stats]
            later = stats[1:]
            share = [s["cached"] / s["prompt"] for s in later if s["prompt"]]
            print(f"\n{len(records)} turns from {len(VIEWERS)} viewers to {records[0].persona} ({records[0].model}),"
                  f" default configuration (recall_k {config.turn.recall_k}, history_messages"
                  f" {config.turn.history_messages}, embedder {config.memory.embedding_model}), {took:.0f} s"
                  + (f"; not complete: {failed}" if failed else ""))
            print(f"prompt tokens: mean {statistics.mean(s['prompt'] for s in later):.0f}"
                  f" (min {min(s['prompt'] for s in later):.0f}, max {max(s['prompt'] for s in later):.0f})")
            print(f"reused from the cache: {sum(s['cached'] for s in later) / sum(s['prompt'] for s in later):.1%} of all"
                  f" prompt tokens after the first turn (mean per turn {statistics.mean(share):.1%},"
                  f" median {statistics.median(share):.1%}, lowest {min(share):.1%})")
            print(f"  of which prepared while the last reply was spoken: "
                  f"{sum(s['prepared'] for s in later) / sum(s['prompt'] for s in later):.1%}; reused from the"
                  f" previous generation: {sum(s['cached'] - s['prepared'] for s in later) / sum(s['prompt'] for s in later):.1%}")
            print(f"computed per turn when asked: median {statistics.median(s['prompt'] - s['cached'] for s in later):.0f}"
                  f" tokens (mean {statistics.mean(s['prompt'] - s['cached'] for s in later):.0f})")
            print(f"the model's time to first token in the session: median"
                  f" {1000 * statistics.median(ttft[1:]):.0f} ms, p90 {1000 * sorted(ttft[1:])[int(0.9 * len(ttft[1:]))]:.0f} ms")
            sampled = [ttft[i] for i in range(args.every - 1, len(ttft), args.every)]
            whole = await without_cache(model, records, args.every)
            print(f"the same {len(whole)} sampled prompts ({statistics.mean(n for _, n in whole):.0f} tokens on average):"
                  f" first token with the cache (in the session) median {1000 * statistics.median(sampled):.0f} ms,"
                  f" computed whole median {1000 * statistics.median(t for t, _ in whole):.0f} ms")
            same, checked = await greedy_same(model, records, app.director.cast.persona, args.every)
            print(f"greedy replies with the cache (prepared) and without: {same} of {checked} the same")
            await app.aclose()

        asyncio.run(run())


if __name__ == "__main__":
    main()
