"""Memory to weights: the same viewers' facts, recalled two ways, in one run, on one metric.

Every row is the same forced choice on the same held-out questions (a wording never trained on):
the true answer against three in-set distractors by log-likelihood (chance 0.25), as the gate
scores it, beside its control: the same answers after an unrelated question. "Above control" is
what the question itself brings back.

- weights (closed book): the facts curated as questions (three wordings trained, the fourth held
  out), a LoRA trained on the tiny learner with `omoide train`'s trainer, no memories in the prompt.
- retrieval, then the model answers: the facts in the real memory store (SQLite + the bundled
  embedding model), the k memories recall brings for the question in the system prompt
  (turn.recall_k, 3 by default), answered by the base model, and by the trained one.
- and, apart, how often retrieval found the fact at all (among the k): a property of the store,
  not of an answer, so it is not divided into anything.

    python bench/memory_to_weights.py                 # 24 viewers, 300 steps
    python bench/memory_to_weights.py --viewers 40 --steps 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from memory.embed import Embedder, bundled_path  # noqa: E402
from memory.store import SqliteMemory  # noqa: E402
from persona_model import tiny  # noqa: E402
from persona_model.train.curate import CurationSettings, curate  # noqa: E402
from persona_model.train.evaluate import closed_book_recall, recall_control  # noqa: E402
from persona_model.train.sft import SftSettings, train  # noqa: E402

NAMES = ["Ada", "Bo", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Mo", "Ned", "Oz", "Pia",
         "Quin", "Rei", "Sol", "Tam", "Uma", "Vic", "Wes", "Xia", "Yan", "Zed", "Abe", "Bea", "Cal", "Dot", "Eli",
         "Flo", "Gil", "Hue", "Ike", "Jan", "Kit", "Lev", "Max", "Nia"]
PETS = ["Miso", "Tofu", "Biscuit", "Pixel", "Mochi", "Yuzu", "Pepper", "Clover"]
SYSTEM = "You are Testa, a warm VTuber."


async def retrieved(facts: list[str], questions: list[str], k: int, db: Path) -> list[list[str]]:
    embedder = Embedder(bundled_path())
    store = await SqliteMemory.open(db, encoder=lambda: embedder)
    try:
        await asyncio.wait_for(store.index_ready.wait(), 120)
        for fact in facts:
            await store.add_memory(fact, source="twitch")
        while len(store.index or ()) < len(facts):
            await asyncio.sleep(0.05)
        return [[m.text for m in await store.recall(q, k)] for q in questions]
    finally:
        await store.aclose()


def scored(model: Any, tok: Any, items: list[dict[str, Any]]) -> tuple[float, float]:
    """(right, control): the share answered right, and the same answers after an unrelated question."""
    return closed_book_recall(model, tok, items).share, recall_control(model, tok, items).share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--k", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(0)
    names = NAMES[:args.viewers]
    memories = [{"id": i, "kind": "fact", "text": f"{n} said: my cat is called {rng.choice(PETS)}", "subject": "cat",
                 "viewer_name": n, "source_turns": [], "consent": "approved"} for i, n in enumerate(names)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = tiny.build(work / "learner", like="learner")
        (work / "memories.jsonl").write_text("".join(json.dumps(m) + "\n" for m in memories))
        (work / "turns.jsonl").write_text("")
        window = curate(work / "w", work / "turns.jsonl", work / "memories.jsonl", system=SYSTEM, persona_name="Testa",
                        settings=CurationSettings(persona_examples=False))
        held = window.heldout_facts
        tok = AutoTokenizer.from_pretrained(base)
        plain = AutoModelForCausalLM.from_pretrained(base).eval()
        rows = {"base model, closed book": scored(plain, tok, held)}

        t0 = time.perf_counter()
        result = train(base, work / "w" / "train.jsonl", work / "run",
                       SftSettings(max_steps=args.steps, lr=5e-3, rows=4, seq_len=256), progress=False)
        trained_s = time.perf_counter() - t0
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(result.adapter)).eval()
        rows["weights: trained LoRA, closed book"] = scored(tuned, tok, held)

        by_id = {m["id"]: m["text"] for m in memories}
        found = asyncio.run(retrieved([m["text"] for m in memories], [h["question"] for h in held], args.k,
                                      work / "omoide.db"))
        retrieval = sum(by_id[h["memory_id"]] in f for h, f in zip(held, found, strict=True)) / len(held)
        open_book = [{**h, "system": SYSTEM + "\n\nThings you remember:\n" + "\n".join(f"- {t}" for t in f)}
                     for h, f in zip(held, found, strict=True)]
        rows["retrieval, then the base model answers"] = scored(plain, tok, open_book)
        rows["retrieval, then the trained model answers"] = scored(tuned, tok, open_book)

    print(f"memory to weights: {len(held)} viewers' facts, held-out wording, 3 in-set distractors (chance 0.25);"
          f" the tiny learner (0.9M), {args.steps} steps ({trained_s:.0f} s on this CPU)")
    print(f"{'how the fact is recalled':<46}{'right':>7}{'control':>9}{'above control':>15}")
    for name, (right, control) in rows.items():
        print(f"{name:<46}{right:>7.2f}{control:>9.2f}{right - control:>15.2f}")
    print(f"retrieval found the fact among the {args.k} recalled memories for {retrieval:.2f} of the questions")

if __name__ == "__main__":
    main()
