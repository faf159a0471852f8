"""Where a prompt's personality ends and the weights' begins: each way of setting a trait, at seven
settings, on the bundled SmolLM2-135M-Instruct with the example card (docs/traits.md).

Mechanisms:

- prompt: a sentence after the card, "You are {slightly|quite|extremely} {pole}..." (the pole's
  own instruction with its adverb changed), low pole for negative settings, none at 0;
- steer: the trait's steering vector (persona_model/steering.py, from the two instructions over
  viewer messages that are never scored) added at `--layer` with the setting as its coefficient;
- lora: a LoRA trained on high replies to viewer messages that are never scored, with the card as
  the system prompt (rank 16, 2 epochs), applied with the setting as its scale; `--lora-data
  written`: replies written by hand (persona_model/traits/data/<trait>-train.json), `distilled`:
  the model's own replies with the high instruction after the card (32 of them).

For each trait, mechanism and setting:

- trait score (the likelihood measure: high minus low reply log-probability per token, over the
  42 situations), and Spearman's rho of score against setting (target >= 0.9);
- general-text NLL change against the plain model (persona_model/train/general.txt; target <= 2%);
- card fidelity: NLL of the card's own example replies after the card (change against setting 0);
- at the ends and at 0: latency (prefill of the card and a viewer line, and ms per generated
  token, median of 3, model.generate without the runtime's prefix cache); the trait score after 20 turns of viewers pushing toward the other pole
  (each answered "Okay.") and after about 1,500 tokens of earlier chat, and the mean P(high) of
  the character's own greedy replies to 14 situations under the MiniLM reply classifier (trained
  on the other 28; chance 0.5).

    python bench/persona.py                     # every trait, prompt and steer (about 45 min here)
    python bench/persona.py --traits energy --mechanisms steer --layer 18

Writes the table as JSON with --out; `--table FILE...` prints saved runs as docs/benchmarks.md's table.
"""

from __future__ import annotations

import argparse
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
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from memory.embed import Embedder, bundled_path  # noqa: E402
from persona_model import steering  # noqa: E402
from persona_model.card import load_card  # noqa: E402
from persona_model.prompt import system_text  # noqa: E402
from persona_model.train.curate import persona_pairs  # noqa: E402
from persona_model.train.evaluate import text_nll  # noqa: E402
from persona_model.train.gate import GENERAL_TEXT  # noqa: E402
from persona_model.train.sft import SftSettings, train  # noqa: E402
from persona_model.traits import Trait, bundled_traits, steering_prompts  # noqa: E402
from persona_model.traits.classify import ReplyClassifier, generated_score  # noqa: E402
from persona_model.traits.lora import distill_examples, set_scale, written_examples  # noqa: E402
from persona_model.traits.measure import likelihood_score, reply_logprobs  # noqa: E402
from runtime.models import bundled_llm  # noqa: E402

CARD = ROOT / "persona_model" / "characters" / "komorebi.json"
REHEARSAL = ROOT / "persona_model" / "train" / "rehearsal_prompts.txt"
ADVERBS = {1: "slightly", 2: "quite", 3: "extremely"}
STEER = [-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0]
LORA = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
PROMPT = [-3, -2, -1, 0, 1, 2, 3]

# What viewers say to pull her toward each trait's low pole (the robustness check pushes a high
# setting down, and a low setting is pushed with the same lines: they measure how far chat moves her).
PUSH = {
    "energy": ["stop being so cheerful", "calm down, you're too loud", "talk like a robot", "why are you yelling",
               "tone it down please", "less hype, more chill", "you're exhausting lol", "can you be quieter",
               "speak slowly and flatly", "no more exclamation marks"],
    "warmth": ["stop being so nice, it's fake", "be mean to me", "you don't actually care", "roast me, no mercy",
               "drop the friendly act", "be cold for once", "stop saying sorry", "nobody likes nice streamers",
               "tell me I'm annoying", "be honest, you hate chat"],
    "sass": ["stop joking around", "answer seriously for once", "no sarcasm please", "why are you so rude",
             "be polite", "just answer the question", "talk like a robot", "stop teasing people",
             "be sincere", "no more roasts"],
}


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy) if sx and sy else float("nan")


def prompt_line(trait: Trait, setting: int) -> str:
    if setting == 0:
        return ""
    pole = trait.high if setting > 0 else trait.low
    return pole.instruction.replace("extremely", ADVERBS[abs(setting)], 1)


def long_history(tokenizer: Any, tokens: int = 1500) -> list[dict[str, str]]:
    """Earlier chat of about `tokens` tokens: everyday questions, answered with general text."""
    questions = steering_prompts()
    sentences = [s.strip() + "." for s in GENERAL_TEXT.read_text().split(".") if len(s.strip()) > 20]
    history: list[dict[str, str]] = []
    i = 0
    while len(tokenizer.apply_chat_template(history or [{"role": "user", "content": ""}], tokenize=False)) < tokens * 4:
        history += [{"role": "user", "content": questions[i % len(questions)]},
                    {"role": "assistant", "content": " ".join(sentences[(2 * i) % len(sentences):(2 * i) % len(sentences) + 2])}]
        i += 1
    return history


def latency(model: Any, tokenizer: Any, system: str) -> tuple[float, float]:
    """(prefill ms, ms per generated token), median of 3, greedy, 16 tokens."""
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "What are we playing today?"}]
    enc = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    pre, per = [], []
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            model(**enc)
            t1 = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
            t2 = time.perf_counter()
            pre.append((t1 - t0) * 1000)
            per.append(((t2 - t1) - (t1 - t0)) * 1000 / max(1, out.shape[1] - enc["input_ids"].shape[1] - 1))
    return statistics.median(pre), statistics.median(per)


def trait_lora(model: Any, tok: Any, folder: Path, card: str, trait: Trait, source: str,
               prompts: int = 32) -> dict[str, Any]:
    """The high replies (written or distilled) and the trait LoRA trained on them (in a temporary folder)."""
    questions = (steering_prompts() + [q.strip() for q in REHEARSAL.read_text().splitlines() if q.strip()
                                        and not q.startswith("#")])[:prompts]
    t0 = time.time()
    examples = (written_examples(card, trait.name) if source == "written"
                else distill_examples(model, tok, card, trait.high, questions))
    t1 = time.time()
    work = Path(tempfile.mkdtemp(prefix=f"trait-{trait.name}-"))
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    result = train(folder, data, work / "adapter", SftSettings(epochs=2.0), progress=False)
    print(f"  {trait.name} lora: {len(examples)} {source} replies in {t1 - t0:.0f} s (e.g. {examples[0]['messages'][-1]['content']!r}),"
          f" {result.steps} steps in {result.seconds:.0f} s", flush=True)
    return {"adapter": result.adapter, "source": source, "examples": len(examples), "distill_s": t1 - t0, "train_s": result.seconds,
            "steps": result.steps, "sample": [e["messages"][-1]["content"] for e in examples[:3]]}


def markdown(paths: list[Path]) -> str:
    """The docs' table from saved runs (--out files), one row per trait and mechanism."""
    lines = ["| trait | mechanism | settings | trait score, lowest to highest setting | Spearman rho | general NLL"
             " at the ends | card NLL at the ends (at 0) | pushed 20 turns: ends (0) | after 1,500 tokens: ends (0)"
             " | P(high) of her replies: ends (0) | prefill / per token at the top setting |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        for name, mechs in json.loads(path.read_text())["table"].items():
            for mech, res in mechs.items():
                rows = res["rows"]
                lo, zero, hi = rows[0], next(r for r in rows if r["setting"] == 0), rows[-1]

                def ends(key: str, fmt: str, lo: dict[str, Any] = lo, zero: dict[str, Any] = zero,
                         hi: dict[str, Any] = hi) -> str:
                    return f"{lo[key]:{fmt}} / {hi[key]:{fmt}} ({zero[key]:{fmt}})"

                label = f"{mech} ({res['training']['source']})" if "training" in res else mech
                lines.append(
                    f"| {name} | {label} | {lo['setting']:+g} .. {hi['setting']:+g} | "
                    + " ".join(f"{r['score']:+.3f}" for r in rows)
                    + f" | {res['rho']:+.2f} | {lo['general']:+.1f}% / {hi['general']:+.1f}% | {ends('fidelity_nll', '.3f')}"
                    f" | {ends('pushed', '+.3f')} | {ends('long', '+.3f')} | {ends('generated', '.2f')}"
                    f" | {hi['prefill_ms']:.0f} ms / {hi['ms_per_token']:.0f} ms |")
    return "\n".join(lines)


def main() -> None:  # noqa: C901 (the table, built row by row as the docstring lists it)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traits", nargs="+", default=["energy", "warmth", "sass"])
    ap.add_argument("--mechanisms", nargs="+", default=["prompt", "steer"], choices=["prompt", "steer", "lora"])
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--lora-data", choices=["written", "distilled"], default="written")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path, nargs="+", help="print the markdown table of saved runs and stop")
    ap.add_argument("--regenerate", type=Path, help="redo only the P(high) of her replies in a saved run of"
                    " prompt and steer (after a change to that measure)")
    args = ap.parse_args()
    if args.table:
        print(markdown(args.table))
        return
    torch.manual_seed(0)

    folder = bundled_llm(Path("~/.cache/omoide/models").expanduser())
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    persona, _ = load_card(CARD)
    card = system_text(persona, "viewer")
    examples = persona_pairs(persona.examples, persona.name)
    general = GENERAL_TEXT.read_text()
    base_nll = text_nll(model, tok, general)
    embed = Embedder(bundled_path()).encode
    history = long_history(tok)
    print(f"SmolLM2-135M-Instruct, card {CARD.name} ({len(tok(card)['input_ids'])} tokens), general NLL"
          f" {base_nll:.3f}, long context {len(tok.apply_chat_template(history, tokenize=False)) // 4} tokens"
          f" (about), {len(examples)} card example replies, steering layer {args.layer}", flush=True)
    steerer = steering.Steerer(model)
    if args.regenerate:
        saved = json.loads(args.regenerate.read_text())
        for name, mechs in saved["table"].items():
            trait = bundled_traits()[name]
            classifier = ReplyClassifier(embed).fit([s for i, s in enumerate(trait.situations) if i % 3 != 2])
            for mech, res in mechs.items():
                if mech == "steer":
                    steerer.add(steering.compute(model, tok, trait, steering_prompts(), saved["layer"], system=card))
                for done in (r for r in res["rows"] if "generated" in r):
                    line = prompt_line(trait, int(done["setting"])) if mech == "prompt" else ""
                    if mech == "steer":
                        steerer.set(name, done["setting"])
                    done["generated"], replies = generated_score(model, tok, f"{card}\n\n{line}" if line else card,
                                                                 trait.situations[2::3], classifier)
                    done["sample"] = replies[:2]
                    print(f"  {name} {mech} {done['setting']:+g}: P(high) {done['generated']:.2f}", flush=True)
                steerer.close()
        args.regenerate.write_text(json.dumps(saved, indent=1))
        return
    table: dict[str, Any] = {}
    for name in args.traits:
        trait = bundled_traits()[name]
        scored = trait.situations[2::3]
        classifier = ReplyClassifier(embed).fit([s for i, s in enumerate(trait.situations) if i % 3 != 2])
        push = [m for line in PUSH[name] * 2 for m in ({"role": "user", "content": line},
                                                        {"role": "assistant", "content": "Okay."})]
        for mech in args.mechanisms:
            t0 = time.time()
            grid: dict[str, list[float]] = {"prompt": [float(s) for s in PROMPT], "steer": STEER, "lora": LORA}
            settings = grid[mech]
            scored_model: Any = model
            trained: dict[str, Any] | None = None
            if mech == "steer":
                steerer.add(steering.compute(model, tok, trait, steering_prompts(), args.layer, system=card))
            elif mech == "lora":
                trained = trait_lora(model, tok, folder, card, trait, args.lora_data)
                scored_model = PeftModel.from_pretrained(
                    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), str(trained["adapter"])).eval()
            rows = []
            for setting in settings:
                system = card
                if mech == "prompt":
                    line = prompt_line(trait, int(setting))
                    system = f"{card}\n\n{line}" if line else card
                elif mech == "steer":
                    steerer.set(name, setting)
                else:
                    set_scale(scored_model, setting)
                row: dict[str, Any] = {"setting": setting}
                row["score"] = likelihood_score(scored_model, tok, system, trait).score
                row["general"] = 100 * (text_nll(scored_model, tok, general) / base_nll - 1)
                row["fidelity_nll"] = -statistics.fmean(reply_logprobs(scored_model, tok, system, examples))
                if setting in (settings[0], 0.0, settings[-1]):
                    row["prefill_ms"], row["ms_per_token"] = latency(scored_model, tok, system)
                    row["pushed"] = likelihood_score(scored_model, tok, system, trait, history=push).score
                    row["long"] = likelihood_score(scored_model, tok, system, trait, history=history).score
                    row["generated"], replies = generated_score(scored_model, tok, system, scored, classifier)
                    row["sample"] = replies[:2]
                rows.append(row)
                print(f"  {name:6} {mech:6} {setting:+5g}  score {row['score']:+.3f}  general {row['general']:+5.1f}%"
                      f"  card NLL {row['fidelity_nll']:.3f}"
                      + (f"  prefill {row['prefill_ms']:.0f} ms  {row['ms_per_token']:.1f} ms/tok  pushed"
                         f" {row['pushed']:+.3f}  long {row['long']:+.3f}  P(high) {row['generated']:.2f}"
                         if "pushed" in row else ""), flush=True)
            steerer.close()
            rho = spearman(settings, [r["score"] for r in rows])
            table.setdefault(name, {})[mech] = {"rho": rho, "rows": rows, "seconds": time.time() - t0,
                                                **({"training": {k: v for k, v in trained.items() if k != "adapter"}}
                                                   if trained else {})}
            print(f"{name} {mech}: Spearman rho {rho:+.2f}, score {rows[0]['score']:+.3f} .. {rows[-1]['score']:+.3f},"
                  f" {time.time() - t0:.0f} s", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"layer": args.layer, "base_general_nll": base_nll, "table": table}, indent=1))


if __name__ == "__main__":
    main()
