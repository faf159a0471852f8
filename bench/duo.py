"""Two characters on one stream, on this CPU with the bundled stack: the gap between them, and
whether their lines can be told apart.

gap: Komorebi and Kage (the two bundled cards; Kage with an espeak-ng voice of her own) built from
config.toml as a user runs it (the bundled SmolLM2-135M-Instruct shared by both, the Piper voice,
memory recall by meaning, history and reflection on), silent speakers that keep real-time pace.
A viewer's line naming nobody is answered by one, then they banter ([collab] banter = 2 lines);
the next line comes when the exchange is over. The gap is from the end of one character's last
audio to the start of the other's first, on the speakers' own timeline, for each banter line.
Three ways, one after the other in turn, exchange by exchange, in the same run:

- before: one prompt start kept by the model (what a single character needs), each character
  preparing only her own next prompt (how Omoide ran a duo before this bench);
- prompt: a prompt start kept for each character, and the next speaker's (her persona, her
  history with the line she answers) computed under her adapter while the other's last words
  are spoken;
- turn (the default): her whole banter turn started then (her reply generated, its first
  sentence voiced), held until the line it answers has been heard to its end.

separability: can a classifier on MiniLM embeddings of their lines tell the two apart? Each
answers held-out viewer questions (other topics and wordings than training saw), with the
configured sampling (lines of at most 60 tokens, about two sentences), four ways: with neither her card nor an adapter (her name only: the control
that says what the setting alone gives), with her card (prompts only), with her adapter and her
name only (weights only), and with both (the duo as it runs). Each character's adapter is a LoRA
trained with `omoide train`'s trainer on her own carded replies to other questions, with her name
only as the prompt: her card distilled into her weights. The score is 5-fold cross-validated
accuracy of a logistic regression (chance 0.5; both answers to a question in one fold), beside
the same with shuffled labels, and without a line's leading "Name:" (the small model often starts
with a viewer's name, mangled: a tell that is not her voice).

    python bench/duo.py                          # both parts (about 35 min here)
    python bench/duo.py --part gap --exchanges 12
    python bench/duo.py --part separability --epochs 8
    python bench/duo.py --part separability --reuse /tmp/omoide-duo-bench-XXXX   # her adapters from before
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from replies import NAMES, bench_config  # noqa: E402

from memory.embed import Embedder, bundled_path  # noqa: E402
from persona_model.card import load_card  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from persona_model.train.sft import SftSettings, train  # noqa: E402
from persona_model.traits.classify import separability  # noqa: E402
from plugins.speakers_silent import SilentSpeakers  # noqa: E402
from runtime.app import build  # noqa: E402
from runtime.config import CharacterEntry, Config, VoiceConfig  # noqa: E402
from runtime.events import InputEvent, InputKind, Persona, Priority, PromptContext, TurnRecord  # noqa: E402
from runtime.models import model_from, model_path  # noqa: E402
from runtime.ports import MonotonicClock  # noqa: E402

CARDS = ROOT / "persona_model" / "characters"
MODES = {"before": (1, "off"), "prompt": (2, "prompt"), "turn": (2, "turn")}  # (shared_by, director.ahead)
CHAT = ["what should we play tonight?", "who is better at puzzle games?", "it is raining here, what about there?",
        "any snack ideas for a long stream?", "tell us a story about the forest", "what is the worst game ever made?",
        "I just got a new cat!", "who wakes up first in the morning?", "rate my tea: mint with honey",
        "what is the scariest thing in the forest?", "can you two sing something?", "who won the last race?",
        "what do you do after stream?", "hot take: pineapple on pizza", "what was today's best moment?",
        "should we try hard mode?", "favourite season and why?", "say something nice to chat"]
TRAIN_TOPICS = ["rainy days", "cats", "horror games", "breakfast", "the moon", "music", "homework", "mushrooms",
                "racing games", "winter", "birthdays", "coffee", "spiders", "puzzles", "the ocean", "sleep",
                "memes", "dancing", "gardening", "robots", "thunderstorms", "pizza", "mornings", "libraries"]
TEST_TOPICS = ["camping", "dragons", "chess", "ice cream", "trains", "painting", "owls", "summer", "karaoke",
               "magic tricks", "soup", "old computers"]
TRAIN_WORDINGS = ["what do you think about {}?", "tell me about {}", "do you like {}?"]
TEST_WORDINGS = ["any thoughts on {}?", "how do you feel about {}?"]


def duo_config(config: Config, work: Path) -> Config:
    """The two bundled characters, each with her home in `work`; Kage speaks with espeak-ng."""
    cast = [CharacterEntry(name="Komorebi", card=str(CARDS / "komorebi.json"), greet=False, home=str(work / "komorebi")),
            CharacterEntry(name="Kage", card=str(CARDS / "kage.json"), greet=False, home=str(work / "kage"),
                           voice=VoiceConfig(engine="espeak", espeak={"voice": "en-us+f4", "pitch": 30}))]
    return config.model_copy(update={"characters": cast})


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- the gap ------------------------------------------------------------------------------------
async def gap(config: Config, model: LocalPersonaModel, exchanges: int, banter: int) -> None:
    app = await build(config, model=model, console=False, clock=MonotonicClock())
    director, playout = app.director, app.sinks[0]
    assert isinstance(playout, SilentSpeakers), type(playout)
    spans: dict[str, list[tuple[float, float]]] = {}  # turn id -> (start, end) of each chunk, as heard
    play = playout.play

    async def timed(chunk: Any) -> None:
        start = max(playout._until, playout.clock.now())
        if director.current is not None:
            spans.setdefault(director.current.turn_id, []).append((start, start + chunk.duration))
        await play(chunk)

    playout.play = timed  # type: ignore[method-assign]
    done: list[tuple[TurnRecord, int, int, int]] = []
    director.on_turn = lambda r: done.append((r, model.last_stats.prompt_tokens, model.last_stats.cached_tokens,
                                              model.last_stats.prepared_tokens))
    runner = asyncio.create_task(director.run(), name="bench-director")
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    transcript: list[str] = []
    order = list(MODES)
    for i in range(exchanges * len(order) + 1):  # the first warms up and is not counted
        mode = order[(i - 1) % len(order)] if i else "turn"
        model.shared_by, director.ahead = MODES[mode]  # type: ignore[assignment]
        n = len(done)
        line = CHAT[i % len(CHAT)]
        director.submit(InputEvent(InputKind.CHAT, line, "twitch", director.cast.clock.now(), NAMES[i % len(NAMES)],
                                   Priority.NORMAL, meta={"untrusted": True, "user_id": str(1000 + i % len(NAMES))}))
        t0 = time.monotonic()
        while len(done) < n + 1 + banter and time.monotonic() - t0 < 300:
            await asyncio.sleep(0.01)
        new = done[n:]
        if len(transcript) < 24:
            transcript += [f"{NAMES[i % len(NAMES)]}: {line}"] + [f"{r.persona}: {r.spoken_text}" for r, *_ in new]
        if not i:
            continue
        for (before, *_), (after, prompt, cached, prepared) in zip(new[:-1], new[1:], strict=False):
            if before.turn_id in spans and after.turn_id in spans and before.persona != after.persona:
                rows[mode].append({"gap": spans[after.turn_id][0][0] - spans[before.turn_id][-1][1],
                                   "prompt": prompt, "cached": cached, "prepared": prepared})
        print(f"  exchange {i:2} ({mode:8}): " + ", ".join(
            f"{r['gap'] * 1000:.0f} ms" for r in rows[mode][-banter:]), flush=True)
    director.stop()
    await runner
    await app.aclose()
    print("\nthe gap between two characters: end of one's last audio -> start of the other's first"
          f" ({exchanges} exchanges a way, {banter} banter lines each)")
    print(f"  {'way':10} {'gaps':>5} {'median ms':>10} {'p90 ms':>8} {'prompt tokens':>14} {'from cache':>11}"
          f" {'prepared':>9}")
    for mode, r in rows.items():
        if not r:
            continue
        gaps = [x["gap"] * 1000 for x in r]
        share = sum(x["cached"] for x in r) / max(sum(x["prompt"] for x in r), 1)
        print(f"  {mode:10} {len(r):5} {statistics.median(gaps):10.0f} {pct(gaps, 0.9):8.0f}"
              f" {statistics.median(x['prompt'] for x in r):14.0f} {share:11.0%}"
              f" {statistics.median(x['prepared'] for x in r):9.0f}")
    print("\ntranscript (the first exchanges):")
    for t in transcript:
        print(f"  {t}")


# ---- separability -------------------------------------------------------------------------------
def heard(text: str) -> str:
    """The line as viewers get it: expression tags out."""
    return re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]", " ", text)).strip()


async def lines(model: LocalPersonaModel, persona: Persona, questions: list[str], seed: int) -> list[str]:
    """Her replies to `questions`, one each, drawn with the configured sampling from fixed seeds."""
    sampling = model.sampling
    out = []
    try:
        for i, q in enumerate(questions):
            model.sampling = dataclasses.replace(sampling, seed=seed + i)
            event = InputEvent(InputKind.CHAT, q, "twitch", 0.0, NAMES[i % len(NAMES)], meta={"untrusted": True})
            prompt = model.render(PromptContext(persona, (event,), ()))
            out.append(heard("".join([p async for p in model.stream(prompt)])))
    finally:
        model.sampling = sampling
    return out


async def use(model: LocalPersonaModel, adapter: Path | None) -> None:
    await asyncio.to_thread(model.stage_adapter, adapter, adapter.parent.name if adapter else None)
    await model.swap_when_free()


async def tell_apart(config: Config, model: LocalPersonaModel, work: Path, epochs: float, samples: int,
                     tokens: int, reuse: Path | None) -> None:
    model.sampling = dataclasses.replace(model.sampling, max_new_tokens=tokens)
    cards = [load_card(CARDS / f"{n}.json")[0] for n in ("komorebi", "kage")]
    names = [Persona(c.name) for c in cards]
    train_qs = [TRAIN_WORDINGS[i % len(TRAIN_WORDINGS)].format(t) for i, t in enumerate(TRAIN_TOPICS)]
    train_qs += [TRAIN_WORDINGS[(i + 1) % len(TRAIN_WORDINGS)].format(t) for i, t in enumerate(TRAIN_TOPICS)]
    test_qs = [w.format(t) for t in TEST_TOPICS for w in TEST_WORDINGS] * samples
    adapters: list[Path] = []
    for card, name in zip(cards, names, strict=True):
        if reuse is not None:  # her adapter from an earlier run of this part
            adapters.append(reuse / card.name / "adapter" / "adapter")
            continue
        t0 = time.perf_counter()
        replies = await lines(model, card, train_qs, seed=10_000)
        examples = []
        for i, (q, reply) in enumerate(zip(train_qs, replies, strict=True)):
            if reply:
                event = InputEvent(InputKind.CHAT, q, "twitch", 0.0, NAMES[i % len(NAMES)], meta={"untrusted": True})
                prompt = model.render(PromptContext(name, (event,), ()))
                examples.append({"messages": [{"role": m.role, "content": m.content} for m in prompt.messages]
                                 + [{"role": "assistant", "content": reply}]})
        data = work / f"{card.name}.jsonl"
        data.write_text("".join(json.dumps(e) + "\n" for e in examples))
        t1 = time.perf_counter()
        result = await asyncio.to_thread(train, model_path(config), data, work / card.name / "adapter",
                                         SftSettings(epochs=epochs), progress=False)
        adapters.append(result.adapter)
        print(f"  {card.name}: {len(examples)} carded replies in {t1 - t0:.0f} s (e.g. {replies[0]!r}); her adapter:"
              f" {result.steps} steps in {result.seconds:.0f} s, loss {result.losses[0]:.2f} -> {result.losses[-1]:.2f}",
              flush=True)
    embed = Embedder(bundled_path()).encode
    ways = {"neither (her name only)": (names, False), "prompts only (her card)": (cards, False),
            "adapters only (her name)": (names, True), "adapters and cards (the duo)": (cards, True)}
    print(f"\nseparability: {len(test_qs)} held-out questions a character ({len(TEST_TOPICS)} topics x"
          f" {len(TEST_WORDINGS)} wordings x {samples} draws), 5-fold logistic regression on MiniLM; chance 0.50")
    print(f"  {'way':32} {'accuracy':>9} {'shuffled labels':>16} {'no leading name':>16}  a line of each")
    kept: dict[str, list[list[str]]] = {}
    for way, (personas, adapted) in ways.items():
        said: list[list[str]] = []
        for i, persona in enumerate(personas):
            await use(model, adapters[i] if adapted else None)
            said.append(await lines(model, persona, test_qs, seed=0))  # the same draws for both
        await use(model, None)
        kept[way] = said
        texts = said[0] + said[1]
        vectors = embed([t or "(nothing)" for t in texts])
        labels = [0] * len(said[0]) + [1] * len(said[1])
        groups = list(range(len(test_qs))) * 2  # both answers to a question in one fold
        control = float(np.mean([separability(vectors, labels, groups, shuffle_seed=s) for s in range(5)]))
        # the small model often starts a line with a viewer's name, mangled ("Mikea:"): without it
        bare = embed([re.sub(r"^[\w\- ]{1,20}:\s*", "", t) or "(nothing)" for t in texts])
        print(f"  {way:32} {separability(vectors, labels, groups):9.2f} {control:16.2f}"
              f" {separability(bare, labels, groups):16.2f}  {said[0][0][:60]!r} / {said[1][0][:60]!r}", flush=True)
    (work / "lines.json").write_text(json.dumps({"questions": test_qs, "lines": kept}, indent=1))
    print(f"the lines: {work / 'lines.json'}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.toml"))
    ap.add_argument("--part", choices=("gap", "separability", "both"), default="both")
    ap.add_argument("--exchanges", type=int, default=6, help="exchanges for each way of the gap part")
    ap.add_argument("--epochs", type=float, default=8.0, help="epochs of each character's adapter")
    ap.add_argument("--samples", type=int, default=1, help="draws for each held-out question")
    ap.add_argument("--tokens", type=int, default=60, help="tokens a line at most (the configured sampling otherwise)")
    ap.add_argument("--reuse", type=Path, help="the folder of an earlier run: its adapters, not trained again")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="omoide-duo-bench-"))
    config = duo_config(bench_config(args.config, work), work)
    t = time.perf_counter()
    model = await asyncio.to_thread(model_from, config)
    print(f"model {model.name} loaded in {time.perf_counter() - t:.1f} s; sampling {model.sampling}", flush=True)
    if args.part in ("gap", "both"):
        await gap(config, model, args.exchanges, config.collab.banter)
    if args.part in ("separability", "both"):
        await tell_apart(config, model, work, args.epochs, args.samples, args.tokens, args.reuse)


if __name__ == "__main__":
    asyncio.run(main())
