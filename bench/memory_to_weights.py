"""Memory to weights: the same viewers' facts, recalled two ways, in one run, on one metric.

Every row answers the same held-out questions (a wording never trained on), scored two ways:

- forced choice: the bare value ("Miso", a form training never uses: it answers in sentences)
  against three values that differ only in being other viewers' of the same kind, by
  log-likelihood (chance 0.25), as the gate scores it;
- generated: the model's own greedy answer, right when it names the value and no distractor.

Each beside its control: for the forced choice, the higher of the same candidates after an
unrelated question and after the same question about another viewer; for the generated answer,
how often it names this viewer's value when asked about another viewer. "Above" is what the
question itself brings back.

- weights (closed book): the facts curated as `omoide train` curates them (three wordings trained,
  answered in the character's sentences, the fourth held out), a LoRA trained with its trainer, no
  memories in the prompt;
- retrieval, then the model answers: the facts in the real memory store (SQLite + the bundled
  embedding model), the k memories recall brings for the question in the system prompt
  (turn.recall_k, 3 by default), answered by the base model, and by the trained one;
- and, apart, how often retrieval found the fact at all (among the k): a property of the store,
  not of an answer, so it is not divided into anything.

    python bench/memory_to_weights.py                        # the bundled SmolLM2-135M, 30 viewers
    python bench/memory_to_weights.py --model learner --steps 300   # the tiny learner (plumbing)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from viewer_facts import facts, names  # noqa: E402

from memory.embed import Embedder, bundled_path  # noqa: E402
from memory.store import SqliteMemory  # noqa: E402
from persona_model import tiny  # noqa: E402
from persona_model.train.curate import CurationSettings, curate  # noqa: E402
from persona_model.train.evaluate import closed_book_recall, generated_recall, recall_control, text_nll  # noqa: E402
from persona_model.train.gate import GENERAL_TEXT  # noqa: E402
from persona_model.train.rehearsal import self_rehearsal  # noqa: E402
from persona_model.train.sft import SftSettings, train  # noqa: E402
from runtime.models import bundled_llm  # noqa: E402

SYSTEM = "You are Komorebi, a warm and curious VTuber who streams cozy games."


async def retrieved(texts: list[str], questions: list[str], k: int, db: Path) -> list[list[str]]:
    embedder = Embedder(bundled_path())
    store = await SqliteMemory.open(db, encoder=lambda: embedder)
    try:
        await asyncio.wait_for(store.index_ready.wait(), 120)
        for text in texts:
            await store.add_memory(text, source="twitch")
        while len(store.index or ()) < len(texts):
            await asyncio.sleep(0.05)
        return [[m.text for m in await store.recall(q, k)] for q in questions]
    finally:
        await store.aclose()


def scored(model: Any, tok: Any, items: list[dict[str, Any]], generate: bool) -> tuple[float, ...]:
    """(forced choice, its control, generated, its control)."""
    out = [closed_book_recall(model, tok, items).share, recall_control(model, tok, items).share]
    if generate:
        out += [generated_recall(model, tok, items).share,
                generated_recall(model, tok, items, question="control_question").share]
    return tuple(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("bundled", "learner"), default="bundled")
    ap.add_argument("--viewers", type=int, default=30)
    ap.add_argument("--epochs", type=float, default=0.0, help="passes over the window (0: the default configuration's)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps (0: as many as the epochs take)")
    ap.add_argument("--lr", type=float, default=0.0, help="0: the default configuration's (learning.lr)")
    ap.add_argument("--rank", type=int, default=0, help="LoRA rank, alpha twice it (0: the default configuration's)")
    ap.add_argument("--repeats", type=int, default=0,
                    help="each fact's wordings this many times a pass (0: the default configuration's fact_repeats)")
    ap.add_argument("--rehearse", type=int, default=0,
                    help="this many of the model's own answers to everyday questions trained beside the facts")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--no-generate", action="store_true", help="forced choice only (faster)")
    ap.add_argument("--no-retrieval", action="store_true", help="the weights rows only (faster: recipe comparisons)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    torch.manual_seed(0)
    memories = facts(names(args.viewers))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model == "bundled":
            base = bundled_llm(Path("~/.cache/omoide/models").expanduser())
        else:
            base = tiny.build(work / "learner", like="learner")
        (work / "memories.jsonl").write_text("".join(json.dumps(m) + "\n" for m in memories))
        (work / "turns.jsonl").write_text("")
        repeats = args.repeats or CurationSettings().fact_repeats
        window = curate(work / "w", work / "turns.jsonl", work / "memories.jsonl", system=SYSTEM,
                        persona_name="Komorebi", settings=CurationSettings(persona_examples=False, fact_repeats=repeats))
        held = window.heldout_facts
        tok = AutoTokenizer.from_pretrained(base)
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        generate = not args.no_generate
        rows = {"base model, closed book": scored(plain, tok, held, generate)}
        if args.rehearse:
            own = self_rehearsal(plain, tok, SYSTEM, args.rehearse)
            with open(work / "w" / "train.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(ex) + "\n" for ex in own)
        general = GENERAL_TEXT.read_text(encoding="utf-8")
        nll = {"base": text_nll(plain, tok, general)}

        defaults = SftSettings()
        rank = args.rank or defaults.rank
        settings = SftSettings(max_steps=args.steps, lr=args.lr or defaults.lr, epochs=args.epochs or defaults.epochs,
                               rank=rank, alpha=2 * rank,
                               **({"lr": 5e-3, "rows": 4, "seq_len": 256} if args.model == "learner" else {}))
        t0 = time.perf_counter()
        result = train(base, work / "w" / "train.jsonl", work / "run", settings, progress=False)
        trained_s = time.perf_counter() - t0
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                          str(result.adapter)).merge_and_unload().eval()  # the same sums, faster
        rows["weights: trained LoRA, closed book"] = scored(tuned, tok, held, generate)
        nll["trained"] = text_nll(tuned, tok, general)

        hit = float("nan")
        if not args.no_retrieval:
            by_id = {m["id"]: m["text"] for m in memories}
            found = asyncio.run(retrieved([m["text"] for m in memories], [h["question"] for h in held], args.k,
                                          work / "omoide.db"))
            hit = sum(by_id[h["memory_id"]] in f for h, f in zip(held, found, strict=True)) / len(held)
            open_book = [{**h, "system": SYSTEM + "\n\nThings you remember:\n" + "\n".join(f"- {t}" for t in f)}
                         for h, f in zip(held, found, strict=True)]
            rows["retrieval, then the base model answers"] = scored(plain, tok, open_book, generate)
            rows["retrieval, then the trained model answers"] = scored(tuned, tok, open_book, generate)

    size = "SmolLM2-135M-Instruct (bundled)" if args.model == "bundled" else "the tiny learner (0.9M)"
    print(f"memory to weights: {len(held)} viewers' facts ({len(window.train)} training examples), held-out"
          f" wording, the bare value against 3 other viewers' values (chance 0.25); {size}, {result.steps}"
          f" steps ({settings.epochs:g} epochs, each fact's wordings {repeats}x a pass) at lr {settings.lr:g},"
          f" rank {settings.rank}, {args.rehearse} self-rehearsal examples"
          f" ({trained_s:.0f} s on this machine, {result.tokens_per_s:.0f} tok/s)")
    head = f"{'how the fact is recalled':<44}{'choice':>8}{'control':>9}{'above':>7}"
    print(head + (f"{'said':>7}{'control':>9}{'above':>7}" if generate else ""))
    for name, r in rows.items():
        line = f"{name:<44}{r[0]:>8.2f}{r[1]:>9.2f}{r[0] - r[1]:>7.2f}"
        print(line + (f"{r[2]:>7.2f}{r[3]:>9.2f}{r[2] - r[3]:>7.2f}" if generate else ""))
    if not args.no_retrieval:
        print(f"retrieval found the fact among the {args.k} recalled memories for {hit:.2f} of the questions")
    print(f"general-text NLL (persona_model/train/general.txt, what the gate keeps): base {nll['base']:.3f},"
          f" trained {nll['trained']:.3f} ({100 * (nll['trained'] / nll['base'] - 1):+.1f}%)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "hit": hit, "steps": result.steps, "seconds": trained_s,
                                         "facts": len(held), "general_nll": nll, "repeats": repeats}, indent=2))


if __name__ == "__main__":
    main()
