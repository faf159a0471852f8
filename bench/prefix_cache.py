"""Time to first token with and without the local backend's prefix cache, in one run: a persona
prompt of about 1,500 tokens (card, rules, example dialogue) and a new viewer line each turn, on
random weights of real architectures (the same compute as the trained models).

Each turn is rendered by the real PromptRenderer and streamed by LocalPersonaModel; the first
token's time is measured from `stream()` to its first piece. The cached model keeps the last
prompt's key/value cache and prefills only what is new; the other computes every prompt whole.
The first turn fills the cache and is not counted.

    python bench/prefix_cache.py                      # smollm2-135m and qwen2.5-0.5b
    python bench/prefix_cache.py --like smollm2-135m --turns 10
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

import torch  # noqa: E402

from persona_model import tiny  # noqa: E402
from persona_model.generation import Sampling  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from runtime.events import InputEvent, InputKind, Persona, PromptContext  # noqa: E402

LINES = [f"<START>\n{{{{user}}}}: Tell me about puzzle number {i}.\n{{{{char}}}}: Puzzle {i} is a sliding-tile one,"
         f" and I solved it in {i + 3} moves while humming." for i in range(400)]


def persona(tokens: int, tokenizer: object) -> Persona:
    """A card whose example dialogue makes the prompt about `tokens` long."""
    description = "Komorebi is a cheerful forest spirit who streams cozy puzzle games. " * 4
    examples = ""
    for line in LINES:
        if len(tokenizer(examples)["input_ids"]) >= tokens:  # type: ignore[operator]
            break
        examples += line + "\n"
    return Persona("Komorebi", description, "warm, curious, playful", "a cozy stream", examples=examples)


async def first_tokens(model: LocalPersonaModel, card: Persona, turns: int) -> tuple[list[float], int, int]:
    times: list[float] = []
    prompt_tokens = cached = 0
    for i in range(turns + 1):
        event = InputEvent(InputKind.CHAT, f"viewer {i} says: what are you playing today, Komorebi?", "bench", 0.0,
                           f"viewer{i}")
        prompt = model.render(PromptContext(card, (event,)))
        t0 = time.perf_counter()
        stream = model.stream(prompt)
        await anext(stream, None)  # the first piece of text (none: the reply ended first)
        elapsed = time.perf_counter() - t0
        await stream.aclose()
        model.join()
        if i:
            times.append(elapsed)
            prompt_tokens, cached = model.last_stats.prompt_tokens, model.last_stats.cached_tokens
    return times, prompt_tokens, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", action="append", choices=sorted(tiny.SHAPES),
                    help="shapes (default: smollm2-135m, qwen2.5-0.5b)")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    args = ap.parse_args()
    print(f"time to first token, {args.turns} turns after the first, greedy; CPU, {torch.get_num_threads()} threads")
    print(f"{'model':<14}{'prompt':>8}{'reused':>8}  {'no cache p50':>13}{'cache p50':>11}{'speed-up':>10}")
    greedy = Sampling(max_new_tokens=8, temperature=0)
    with tempfile.TemporaryDirectory() as tmp:
        for like in args.like or ["smollm2-135m", "qwen2.5-0.5b"]:
            base = tiny.build(Path(tmp) / like, like=like, train_steps=0)
            plain = LocalPersonaModel.load(base, sampling=greedy, prefix_cache=False, max_prompt_tokens=4096)
            card = persona(args.prompt_tokens - 250, plain.tokenizer)
            slow, n, _ = asyncio.run(first_tokens(plain, card, args.turns))
            del plain
            cached = LocalPersonaModel.load(base, sampling=greedy, prefix_cache=True, max_prompt_tokens=4096)
            fast, _, reused = asyncio.run(first_tokens(cached, card, args.turns))
            del cached
            a, b = statistics.median(slow), statistics.median(fast)
            print(f"{like:<14}{n:>8}{reused:>8}  {a * 1e3:>11.0f}ms{b * 1e3:>9.0f}ms{a / b:>9.1f}x")


if __name__ == "__main__":
    main()
