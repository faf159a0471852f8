"""A month of nights, simulated: consecutive windows, each with new viewers' facts, learned one
after another by each method, and after every window the recall of every earlier window's facts.

Every window: new made-up viewers each state one fact (approved), curated as `omoide train`
curates them (each fact's three trained wordings 8 times a pass, the card's persona lines, and
for the replay methods a share of earlier windows' examples), trained with the default recipe
(LoRA rank 16, lr 2e-3, 3 epochs). After it, on the model each method would serve:

- recall minus control of each window's facts so far, as the gate scores it: asked in the
  held-out wording, the model's own greedy answer names the viewer's value and none of three
  other viewers' values, minus how often it names that value when asked about another viewer;
- general-text NLL (persona_model/train/general.txt) and persona NLL on three of the card's
  lines that are never trained.

Methods (`[learning] method`, docs/learning.md):

- replay: the live adapter trained on, window after window, with 20% replayed earlier examples
  (the loop before self-rehearsal);
- rehearse: replay, plus the model's own answers to everyday questions (learning.rehearsal 0.2);
- ties / dare: a fresh LoRA per window (with self-rehearsal, no replay), all windows' adapters
  merged by peft's add_weighted_adapter (ties_svd / dare_ties_svd, density 0.5) into one LoRA
  (persona_model/train/merge.py, as `omoide train` merges them);
- osf: peft's orthogonal subspace fine-tuning (OSFConfig: the top singular directions frozen,
  the rest trained; merged into the weights after each window, the frozen share growing from 50%
  by 4 points a window), with self-rehearsal, lr 1e-4 (a full-rank method: LoRA's 2e-3 is far
  too high for it).

    python bench/continual.py                              # 10 windows x 30 facts, every method
    python bench/continual.py --windows 5 --facts 5 --methods rehearse ties dare   # what 2 CPU cores allow

Writes docs/continual/<method>.png (and .json) with --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from peft import OSFConfig, PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from viewer_facts import facts, names  # noqa: E402

from persona_model import tiny  # noqa: E402
from persona_model.train.curate import CurationSettings, curate  # noqa: E402
from persona_model.train.evaluate import generated_recall, reply_nll, text_nll  # noqa: E402
from persona_model.train.gate import GENERAL_TEXT  # noqa: E402
from persona_model.train.merge import merge  # noqa: E402
from persona_model.train.rehearsal import with_rehearsal  # noqa: E402
from persona_model.train.sft import SftSettings, train  # noqa: E402
from runtime.models import bundled_llm  # noqa: E402

METHODS = ("replay", "rehearse", "ties", "dare", "osf")
SYSTEM = "You are Komorebi, a warm and curious VTuber who streams cozy games."
TRAINED = ("<START>\n{{user}}: Do you like games?\n{{char}}: Cozy games are my favourite, especially with chat!\n"
           "<START>\n{{user}}: How are you?\n{{char}}: Happy and curious, thank you for asking!\n"
           "<START>\n{{user}}: What do you drink?\n{{char}}: Warm tea, always. I share a cup with chat.\n")
UNTRAINED = [("What do you do on a rainy day?", "I curl up with tea and a cozy game, and I tell chat all about it!"),
             ("Are you scared of horror games?", "A little! But with chat beside me I am brave enough to peek."),
             ("What makes a good stream?", "Warm chat, a calm game and a lot of curiosity, I think!")]


def window_facts(w: int, per: int, seed: int = 0) -> list[dict[str, Any]]:
    people = names((w + 1) * per, seed=seed)[w * per:]
    return facts(people, seed=seed * 1000 + w, first_id=w * per)


def simulate(method: str, base: Path, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    tok = AutoTokenizer.from_pretrained(base)
    general = GENERAL_TEXT.read_text(encoding="utf-8")
    persona = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": u},
                             {"role": "assistant", "content": a}]} for u, a in UNTRAINED]
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    start = {"general": text_nll(plain, tok, general), "persona": reply_nll(plain, tok, persona)}
    del plain
    live: Path | None = None  # replay, rehearse: the adapter the next window continues
    adapters: list[Path] = []  # ties, dare: every window's own
    osf_base = base  # osf: the weights so far
    held: list[list[dict[str, Any]]] = []
    windows: list[Path] = []
    rows = []
    for w in range(args.windows):
        s = args.seed * 1000 + w  # seed 0 is the recorded run
        folder = work / method / f"w{w + 1:02d}"
        folder.mkdir(parents=True)
        (folder / "memories.jsonl").write_text("".join(json.dumps(m) + "\n" for m in window_facts(w, args.facts, args.seed)))
        (folder / "turns.jsonl").write_text("")
        replay = method in ("replay", "rehearse")
        window = curate(folder / "data", folder / "turns.jsonl", folder / "memories.jsonl", system=SYSTEM,
                        persona_name="Komorebi", persona_examples=TRAINED,
                        earlier=[p / "data" / "train.jsonl" for p in windows] if replay else (),
                        settings=CurationSettings(seed=s))
        windows.append(folder)
        held.append(window.heldout_facts)
        model_base = osf_base if method == "osf" else base
        data = with_rehearsal(model_base, live, folder / "data" / "train.jsonl", folder / "run" / "data.jsonl",
                              0.0 if method == "replay" else 0.2, seed=s)
        osf = method == "osf"
        settings = SftSettings(seed=s, epochs=args.epochs, min_steps=args.min_steps, lr=1e-4 if osf else SftSettings().lr)
        config = OSFConfig(effective_rank=min(0.9, 0.5 + 0.04 * w), target_modules="all-linear",
                           task_type="CAUSAL_LM") if osf else None
        t0 = time.perf_counter()
        result = train(model_base, data, folder / "run", settings, start_adapter=live, progress=False, adapter=config)
        seconds = time.perf_counter() - t0
        if replay:
            live = result.adapter
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                              str(live)).merge_and_unload().eval()
        elif osf:
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(osf_base, dtype=torch.float32),
                                              str(result.adapter)).merge_and_unload().eval()
            model.save_pretrained(folder / "weights")  # the next window decomposes these
            tok.save_pretrained(folder / "weights")
            if osf_base != base:
                shutil.rmtree(osf_base)
            osf_base = folder / "weights"
        else:
            adapters.append(result.adapter)
            served = merge(base, adapters, "ties" if method == "ties" else "dare", folder / "merged", seed=s)
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                              str(served)).merge_and_unload().eval()
        recall = [generated_recall(model, tok, items).share
                  - generated_recall(model, tok, items, question="control_question").share for items in held]
        row = {"window": w + 1, "recall_above": recall, "general": text_nll(model, tok, general),
               "persona": reply_nll(model, tok, persona), "train_s": seconds, "steps": result.steps,
               "examples": len(window.train)}
        rows.append(row)
        print(f"  {method} w{w + 1:02d}: this window {recall[-1]:+.2f}, first {recall[0]:+.2f}, mean so far"
              f" {sum(recall) / len(recall):+.2f}; general NLL {row['general']:.3f}"
              f" ({100 * (row['general'] / start['general'] - 1):+.1f}%), persona {row['persona']:.3f};"
              f" {result.steps} steps, {seconds:.0f} s", flush=True)
        del model
    return [{"window": 0, "recall_above": [], "general": start["general"], "persona": start["persona"],
             "train_s": 0.0, "steps": 0, "examples": 0}, *rows]


def table(method: str, rows: list[dict[str, Any]]) -> str:
    start = rows[0]
    out = [f"{method}: window, recall minus control (this window's facts, the first window's, the mean of all so"
           f" far, the first window's share of what it had right after training), general-text NLL change,"
           f" persona NLL (untrained lines), training seconds",
           f"{'window':>6}{'this':>7}{'first':>7}{'mean':>7}{'kept':>7}{'general':>9}{'persona':>9}{'train s':>9}"]
    first = rows[1]["recall_above"][0] if len(rows) > 1 else 0.0
    for r in rows[1:]:
        rec = r["recall_above"]
        kept = f"{rec[0] / first:.0%}" if first > 0 else "-"
        out.append(f"{r['window']:>6}{rec[-1]:>7.2f}{rec[0]:>7.2f}{sum(rec) / len(rec):>7.2f}{kept:>7}"
                   f"{100 * (r['general'] / start['general'] - 1):>+8.1f}%{r['persona']:>9.3f}{r['train_s']:>9.0f}")
    out.append(f"base model: general NLL {start['general']:.3f}, persona NLL {start['persona']:.3f}")
    return "\n".join(out)


def plot(method: str, rows: list[dict[str, Any]], path: Path, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = rows[1:]
    x = [r["window"] for r in done]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for j in range(len(done)):
        left.plot(x[j:], [r["recall_above"][j] for r in done[j:]], color=plt.cm.viridis(j / max(1, len(done) - 1)),
                  marker="o", markersize=3, linewidth=1, label=f"window {j + 1}'s facts" if j in (0, len(done) - 1) else None)
    left.set(xlabel="after window", ylabel="recall minus control", ylim=(-0.3, 1.05), title=f"{method}: each window's facts")
    left.axhline(0, color="grey", linewidth=0.5)
    left.set_xticks(x)
    right.set_xticks(x)
    left.legend(fontsize=7)
    right.plot(x, [100 * (r["general"] / rows[0]["general"] - 1) for r in done], marker="o", label="general text")
    right.plot(x, [100 * (r["persona"] / rows[0]["persona"] - 1) for r in done], marker="s", label="persona (untrained)")
    right.axhline(2, color="red", linewidth=0.5, linestyle="--", label="target: +2% general")
    right.set(xlabel="after window", ylabel="NLL change from the base model, %", title="what wears down")
    right.legend(fontsize=7)
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--facts", type=int, default=30, help="new viewers' facts per window")
    ap.add_argument("--epochs", type=float, default=SftSettings().epochs)
    ap.add_argument("--min-steps", type=int, default=SftSettings().min_steps, help="at least this many steps a window")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--model", choices=("bundled", "learner"), default="bundled", help="learner: the tiny one (plumbing)")
    ap.add_argument("--seed", type=int, default=0, help="other viewers, facts, curation and training order")
    ap.add_argument("--out", type=Path, help="a folder for <method>.png and <method>.json (docs/continual)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    keep = tempfile.TemporaryDirectory()
    base = (bundled_llm(Path("~/.cache/omoide/models").expanduser()) if args.model == "bundled"
            else tiny.build(Path(keep.name) / "learner", like="learner"))
    caption = (f"{'SmolLM2-135M-Instruct' if args.model == 'bundled' else 'the tiny learner'}, {args.windows} windows x {args.facts} new facts, {args.epochs:g} epochs{f' (at least {args.min_steps} steps)' if args.min_steps else ''},"
               f" held-out wordings, generated answers, seed {args.seed} (python bench/continual.py)")
    print(caption, flush=True)
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            rows = simulate(method, base, Path(tmp), args)
        print(table(method, rows), flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            name = method + (f"-seed{args.seed}" if args.seed else "")
            (args.out / f"{name}.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                                          if k != "out"}, "rows": rows}, indent=1))
            plot(method, rows, args.out / f"{name}.png", f"{method}: {caption}")


if __name__ == "__main__":
    main()
