"""Memory to weights: the same viewers' facts, recalled two ways, in one run.

- weights (closed book): the facts curated as questions (three wordings trained, the fourth held
  out), a LoRA trained on the tiny learner with `omoide train`'s trainer, then each held-out
  question asked with no memories in the prompt; right when the true answer has the highest
  log-likelihood among it and three in-set distractors (chance 25%), as the gate scores it.
- retrieval: the same facts in the real memory store (SQLite + the bundled embedding model), the
  same held-out questions asked; right when the fact is among the k memories recall puts in the
  prompt (turn.recall_k, 3 by default).
- retrieval, then the model: the base learner answering the same question with the recalled
  memories in its system prompt, scored like the closed-book one: whether a model this small can
  use what retrieval gives it.

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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from memory.embed import Embedder, bundled_path  # noqa: E402
from memory.store import SqliteMemory  # noqa: E402
from persona_model import tiny  # noqa: E402
from persona_model.train.curate import CurationSettings, curate  # noqa: E402
from persona_model.train.evaluate import closed_book_recall  # noqa: E402
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
        before = closed_book_recall(plain, tok, held).share

        t0 = time.perf_counter()
        result = train(base, work / "w" / "train.jsonl", work / "run",
                       SftSettings(max_steps=args.steps, lr=5e-3, rows=4, seq_len=256), progress=False)
        trained_s = time.perf_counter() - t0
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(result.adapter)).eval()
        weights = closed_book_recall(tuned, tok, held).share

        by_id = {m["id"]: m["text"] for m in memories}
        found = asyncio.run(retrieved([m["text"] for m in memories], [h["question"] for h in held], args.k,
                                      work / "omoide.db"))
        retrieval = sum(by_id[h["memory_id"]] in f for h, f in zip(held, found, strict=True)) / len(held)
        open_book = [{**h, "system": SYSTEM + "\n\nThings you remember:\n" + "\n".join(f"- {t}" for t in f)}
                     for h, f in zip(held, found, strict=True)]
        base_open = closed_book_recall(plain, tok, open_book).share
        tuned_open = closed_book_recall(tuned, tok, open_book).share

    print(f"memory to weights: {len(held)} viewers' facts, held-out wording, 3 in-set distractors (chance 0.25);"
          f" the tiny learner (0.9M), {args.steps} steps ({trained_s:.0f} s on this CPU)")
    print(f"{'how the fact is recalled':<52}{'right':>8}")
    print(f"{'base model, closed book':<52}{before:>8.2f}")
    print(f"{'weights: trained LoRA, closed book':<52}{weights:>8.2f}")
    print(f"{f'retrieval: the fact among the {args.k} recalled memories':<52}{retrieval:>8.2f}")
    print(f"{'retrieval, then the base model answers':<52}{base_open:>8.2f}")
    print(f"{'retrieval, then the trained model answers':<52}{tuned_open:>8.2f}")
    print(f"weights / retrieval: {weights / retrieval:.2f}x")


if __name__ == "__main__":
    main()
