"""Games: how long from a game's `actions/force` to the character's `action`, through the running
character (game API server, director, prompt, schema-constrained JSON from the persona model,
WebSocket both ways), and what the grammar costs per token against free generation of the same
number of tokens, in one run.

- force -> action: a client on 127.0.0.1 registers a move (a cell from the free ones, a short
  taunt), forces it `--forces` times, answers each action at once; the character is built from a
  config like `omoide run` with `game.speak = false` (the reply's speech is another figure:
  bench/first_audio.py).
- constrained vs free: the same prompt, greedy; `generate()` with our llguidance processor, then
  without it forced to the same number of new tokens; ms per token.

    python bench/game_force.py                      # tiny and smollm2-135m (random weights)
    python bench/game_force.py --like tiny --forces 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import websockets  # noqa: E402
from transformers import LogitsProcessorList  # noqa: E402

from persona_model import tiny  # noqa: E402
from persona_model.constrained import SchemaProcessor, ll_tokenizer  # noqa: E402
from persona_model.generation import Sampling  # noqa: E402
from persona_model.json_schema import grammar, tighten  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from runtime.app import build  # noqa: E402
from runtime.config import load  # noqa: E402
from runtime.events import ActionSpec, InputEvent, InputKind, Persona, PromptContext  # noqa: E402
from runtime.game import action_schema, force_text  # noqa: E402
from tests.conftest import write_config  # noqa: E402

MOVE = {"type": "object", "properties": {"cell": {"type": "integer", "enum": [0, 2, 4, 5, 7]},
                                         "taunt": {"type": "string", "maxLength": 40}},
        "required": ["cell", "taunt"]}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def force_to_action(model: LocalPersonaModel, forces: int, work: Path) -> list[float]:
    config = load(write_config(work, game={"enabled": True, "port": 0, "speak": False},
                               avatar={"enabled": False}), env={})
    app = await build(config, model=model, console=False)
    director = asyncio.create_task(app.director.run(), name="director")
    times: list[float] = []
    try:
        assert app.games is not None
        async with websockets.connect(f"ws://127.0.0.1:{app.games.port}") as ws:
            async def send(command: str, data: dict[str, Any] | None = None) -> None:
                await ws.send(json.dumps({"command": command, "game": "Bench", **({"data": data} if data else {})}))

            await send("startup")
            await send("actions/register", {"actions": [{"name": "move", "description": "Make your move",
                                                          "schema": MOVE}]})
            for i in range(forces + 2):  # two warm-ups
                await send("actions/force", {"query": f"Move {i}: pick a free cell.", "state": "X . O\n. . .\nO . X",
                                             "action_names": ["move"]})
                t0 = time.perf_counter()
                while (frame := json.loads(await ws.recv()))["command"] != "action":
                    pass
                if i >= 2:
                    times.append(time.perf_counter() - t0)
                await send("action/result", {"id": frame["data"]["id"], "success": True})
    finally:
        app.director.stop()
        await director
        await app.aclose()
    return times


def constrained_vs_free(model: LocalPersonaModel, runs: int) -> tuple[float, float, float]:
    """(ms/token constrained, ms/token free, mean tokens) on the same prompt, greedy."""
    specs = [ActionSpec("move", "Make your move", MOVE)]
    event = InputEvent(InputKind.GAME_FORCE, "Pick a free cell.", "game:Bench", 0.0, "Bench",
                       meta={"game": "Bench", "query": "Pick a free cell.", "action_names": ["move"]})
    prompt = model.render(PromptContext(Persona("Bench", "A character that plays games."), (InputEvent(
        InputKind.GAME_FORCE, force_text(event, specs, []), "game:Bench", 0.0, "Bench"),)))
    enc = model.tokenizer(prompt.text, return_tensors="pt", add_special_tokens=False)
    lltok = ll_tokenizer(model.tokenizer, int(model.model.config.vocab_size))
    text = grammar(tighten(action_schema(specs)))
    common = {"do_sample": False, "temperature": None, "top_p": None, "pad_token_id": model.tokenizer.eos_token_id}
    c_time = f_time = 0.0
    c_tokens = 0
    with torch.inference_mode():
        for _ in range(runs):
            t0 = time.perf_counter()
            out = model.model.generate(**enc, max_new_tokens=256, **common,
                                       logits_processor=LogitsProcessorList([SchemaProcessor(lltok, text)]))
            c_time += time.perf_counter() - t0
            n = int(out.shape[1] - enc["input_ids"].shape[1])
            c_tokens += n
            t0 = time.perf_counter()
            model.model.generate(**enc, max_new_tokens=n, min_new_tokens=n, **common)
            f_time += time.perf_counter() - t0
    return c_time / c_tokens * 1e3, f_time / c_tokens * 1e3, c_tokens / runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", action="append", choices=sorted(tiny.SHAPES), help="shapes (default: tiny, smollm2-135m)")
    ap.add_argument("--forces", type=int, default=30)
    ap.add_argument("--runs", type=int, default=10, help="generations for constrained vs free")
    args = ap.parse_args()
    print(f"force -> action through the running character ({args.forces} forces), and constrained vs free"
          f" decoding ({args.runs} greedy generations); CPU, {torch.get_num_threads()} threads")
    print(f"{'model':<14}{'params':>8}  {'force->action p50':>18}{'p90':>9}  {'tokens':>7}"
          f"  {'constrained':>12}{'free':>10}{'overhead':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for like in args.like or ["tiny", "smollm2-135m"]:
            work = Path(tmp) / like
            base = tiny.build(work / "model", like=like, train_steps=120 if like == "tiny" else 0)
            model = LocalPersonaModel.load(base, sampling=Sampling(temperature=0, max_new_tokens=40))
            params = sum(p.numel() for p in model.model.parameters()) / 1e6
            times = asyncio.run(force_to_action(model, args.forces, work))
            c, f, n = constrained_vs_free(model, args.runs)
            print(f"{like:<14}{params:>7.1f}M  {pct(times, 0.5) * 1e3:>16.0f}ms{pct(times, 0.9) * 1e3:>7.0f}ms"
                  f"  {n:>7.1f}  {c:>9.2f}ms/t{f:>7.2f}ms/t{(c / f - 1) * 100:>9.0f}%")
            print(f"{'':<24}median force->action {statistics.median(times) * 1e3:.0f} ms = "
                  f"{statistics.median(times) / (c * n / 1e3):.2f}x the constrained generation alone")


if __name__ == "__main__":
    main()
