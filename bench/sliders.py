"""What a trait slider costs a live character, on the default configuration (config.toml: the
bundled SmolLM2-135M-Instruct, the example card, default sampling with a fixed seed), in one run:

- time to first token and ms per generated token of replies with every slider at 0 (no hook: the
  runtime as it is without sliders), with energy held at +4 (the hook adds the vector at layer 12
  on every forward pass), and of the first reply after a slider moved (energy between +4 and -4
  every turn: the kept prefix cache was computed under the old setting, so the whole prompt is
  computed again). The three kinds of turn are interleaved, each viewer line new;
- the first move of each slider on a new model or card (its vector computed: 48 forward passes of
  the card with the two instructions over 24 viewer lines) against a later start (read from its
  llama.cpp control-vector file).

    python bench/sliders.py              # 5 turns of each kind, 48-token replies (about 6 min here)
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

from persona_model.local import LocalPersonaModel  # noqa: E402
from runtime.config import load  # noqa: E402
from runtime.events import InputEvent, InputKind, Persona, PromptContext  # noqa: E402
from runtime.models import model_from  # noqa: E402
from runtime.parts import persona_from  # noqa: E402
from runtime.sliders import slider_system, slider_traits, sliders_on  # noqa: E402

LINES = ["what are you playing today?", "I just got home from work, so tired", "can you say hi to my sister?",
         "is this game hard?", "what's your favourite snack?", "I beat the boss on my first try!",
         "do you like rainy days?", "what should I name my cat?", "how long is the stream tonight?",
         "tell me something random", "I'm learning to draw", "what music do you listen to?"]


async def turn(model: LocalPersonaModel, card: Persona, text: str) -> tuple[float, float, int]:
    """Time to first token (ms), ms per token after it, and the prompt tokens reused from the cache."""
    prompt = model.render(PromptContext(card, (InputEvent(InputKind.CHAT, text, "bench", 0.0, "viewer"),)))
    t0 = time.perf_counter()
    pieces = [p async for p in model.stream(prompt)]
    total = time.perf_counter() - t0
    stats = model.last_stats
    first = stats.pieces[0][0] - stats.started_at if stats.pieces else total
    per_token = (total - first) / max(1, stats.new_tokens - 1)
    assert pieces
    return first * 1000, per_token * 1000, stats.cached_tokens


def row(name: str, runs: list[tuple[float, float, int]]) -> str:
    ttft = statistics.median(r[0] for r in runs)
    tok = statistics.median(r[1] for r in runs)
    cached = statistics.median(r[2] for r in runs)
    return f"{name:<34}{ttft:>10.0f}{tok:>12.1f}{cached:>10.0f}"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=48,
                    help="reply length (the runtime ends a reply after turn.max_sentences = 3, about 50 tokens)")
    ap.add_argument("--config", default=str(ROOT / "config.toml"))
    args = ap.parse_args()
    config = load(args.config, env={})
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"seed": 1, "max_new_tokens": args.max_new_tokens})})
    card, _ = persona_from(config)
    model = model_from(config)
    system = slider_system(card)
    traits = slider_traits(config)
    with tempfile.TemporaryDirectory() as tmp:
        config = config.model_copy(update={"sliders": config.sliders.model_copy(update={"cache": tmp})})
        print(f"first move of each slider, CPU, {torch.get_num_threads()} threads:")
        for name in traits:
            for label in ("computed", "read from its file"):
                sliders = sliders_on(config, model, traits, system)
                t0 = time.perf_counter()
                vector, _ = sliders.vector(name)
                print(f"  {name:<8} {label:<20} {1000 * (time.perf_counter() - t0):8.0f} ms  (layer {vector.layer})")
        model.attach_sliders(sliders_on(config, model, traits, system))
        kinds: dict[str, list[tuple[float, float, int]]] = {"all at 0": [], "energy +4, held": [],
                                                            "first reply after a move": []}
        await turn(model, card, "hello!")  # fills the cache
        sign = 1.0
        for i in range(args.turns):
            for kind in kinds:
                if kind == "all at 0":
                    model.set_traits({})
                    await turn(model, card, "warming up after the change")  # the change's own reply, not counted
                elif kind == "energy +4, held":
                    model.set_traits({"energy": 4.0})
                    await turn(model, card, "warming up after the change")
                else:
                    sign = -sign
                    model.set_traits({"energy": 4.0 * sign})
                kinds[kind].append(await turn(model, card, LINES[i % len(LINES)] + f" ({i})"))
        print(f"\nreplies, {args.turns} of each kind interleaved, max_new_tokens {config.model.max_new_tokens},"
              " medians:")
        print(f"{'':<34}{'first ms':>10}{'ms/token':>12}{'reused':>10}")
        for kind, runs in kinds.items():
            print(row(kind, runs))


if __name__ == "__main__":
    asyncio.run(main())
