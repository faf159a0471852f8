"""Memory into weights on a tiny model: viewers' facts, curated as questions, trained into a LoRA,
are then recalled closed-book (no memories in the prompt) far above chance."""

from __future__ import annotations

import json
import random

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_model import tiny
from persona_model.train.curate import CurationSettings, curate, fact_items
from persona_model.train.evaluate import closed_book_recall
from persona_model.train.sft import SftSettings, train

pytestmark = pytest.mark.model

NAMES = ["Ada", "Bo", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Mo", "Ned", "Oz", "Pia",
         "Quin", "Rei", "Sol", "Tam"]
PETS = ["Miso", "Tofu", "Biscuit", "Pixel", "Mochi", "Yuzu", "Pepper", "Clover"]


@pytest.mark.slow  # about 90 s: `make test-slow`, which CI runs too
def test_a_lora_on_the_learner_recalls_viewers_facts_closed_book(tmp_path):
    base = tiny.build(tmp_path / "learner", like="learner")
    rng = random.Random(0)
    memories = [{"id": i, "kind": "fact", "text": f"{n} said: my cat is called {rng.choice(PETS)}", "subject": "cat",
                 "viewer_name": n, "source_turns": [], "consent": "approved"} for i, n in enumerate(NAMES)]
    (tmp_path / "memories.jsonl").write_text("".join(json.dumps(m) + "\n" for m in memories))
    (tmp_path / "turns.jsonl").write_text("")
    window = curate(tmp_path / "w", tmp_path / "turns.jsonl", tmp_path / "memories.jsonl", system="You are Testa.",
                    persona_name="Testa", settings=CurationSettings(persona_examples=False))
    held = window.heldout_facts
    assert len(held) == 20
    trained = [{**next(h for h in held if h["memory_id"] == m["id"]), "question": fact_items(m)[0][0]}  # type: ignore[index]
               for m in memories]
    tok = AutoTokenizer.from_pretrained(base)
    before = AutoModelForCausalLM.from_pretrained(base).eval()
    start_trained, start_held = closed_book_recall(before, tok, trained).share, closed_book_recall(before, tok, held).share

    result = train(base, tmp_path / "w" / "train.jsonl", tmp_path / "run",
                   SftSettings(max_steps=300, lr=3e-3, rows=4, seq_len=256), progress=False)
    after = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(result.adapter)).eval()
    end_trained, end_held = closed_book_recall(after, tok, trained).share, closed_book_recall(after, tok, held).share
    print(f"closed-book recall: trained wordings {start_trained:.2f} -> {end_trained:.2f},"
          f" held-out wording {start_held:.2f} -> {end_held:.2f} (chance 0.25)")
    assert start_trained <= 0.5 and end_trained >= 0.9
    assert end_held > start_held
