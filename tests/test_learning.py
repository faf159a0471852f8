"""Memory into weights on a tiny model: viewers' facts, curated as questions, trained into a LoRA;
then asked in a wording never trained, with no memories in the prompt, the model names the right
viewer's value in its own words more often than when asked about someone else (the control). And
why the gate scores the generated answer: a forced choice on the bare value ("Miso" against
"Tofu"), a form training never used, stays at its control on a model that only ever answers in
sentences, though it learned the facts. (The real model: bench/memory_to_weights.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_model import tiny
from persona_model.train.curate import CurationSettings, curate
from persona_model.train.evaluate import closed_book_recall, generated_recall, recall_control
from persona_model.train.sft import SftSettings, train

pytestmark = pytest.mark.model

NAMES = ["Ada", "Bo", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Mo", "Ned", "Oz", "Pia",
         "Quin", "Rei", "Sol", "Tam"]
PETS = ["Miso", "Tofu", "Biscuit", "Pixel", "Mochi", "Yuzu", "Pepper", "Clover"]


def trained_sentences(folder: Path) -> list[dict[str, Any]]:
    """Each fact's first trained question with its trained answer, against the same sentence with
    other viewers' cats: the score a gate would give if it asked for what training taught."""
    items, seen = [], set()
    for line in (folder / "train.jsonl").read_text().splitlines():
        ex = json.loads(line)
        if ex["kind"] != "fact_qa" or ex["memory_id"] in seen:
            continue
        seen.add(ex["memory_id"])
        user, answer = ex["messages"][1]["content"], ex["messages"][2]["content"]
        pet = next(p for p in PETS if p in answer)
        others = [p for p in PETS if p != pet][:3]
        items.append({"question": user, "answer": answer, "distractors": [answer.replace(pet, o) for o in others],
                      "system": ex["messages"][0]["content"]})
    return items


@pytest.mark.slow  # about 90 s: `make test-slow`, which CI runs too
def test_a_lora_on_the_learner_recalls_viewers_facts_closed_book(tmp_path):
    base = tiny.build(tmp_path / "learner", like="learner")
    rng = random.Random(0)
    pets = {n: rng.choice(PETS) for n in NAMES}
    memories = [{"id": i, "kind": "fact", "text": f"{n} said: my cat is called {pets[n]}", "subject": "cat",
                 "viewer_name": n, "source_turns": [], "consent": "approved"} for i, n in enumerate(NAMES)]
    (tmp_path / "memories.jsonl").write_text("".join(json.dumps(m) + "\n" for m in memories))
    (tmp_path / "turns.jsonl").write_text("")
    window = curate(tmp_path / "w", tmp_path / "turns.jsonl", tmp_path / "memories.jsonl", system="You are Testa.",
                    persona_name="Testa", settings=CurationSettings(persona_examples=False))
    held = window.heldout_facts
    assert len(held) == 20 and all(h["answer"] == pets[NAMES[h["memory_id"]]] for h in held)  # the bare value
    sentences = trained_sentences(tmp_path / "w")
    tok = AutoTokenizer.from_pretrained(base)
    before = AutoModelForCausalLM.from_pretrained(base).eval()
    start_sentence = closed_book_recall(before, tok, sentences).share

    result = train(base, tmp_path / "w" / "train.jsonl", tmp_path / "run",
                   SftSettings(max_steps=300, lr=3e-3, rows=4, seq_len=256), progress=False)
    after = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(result.adapter)).eval()
    end_sentence = closed_book_recall(after, tok, sentences).share
    choice, choice_control = closed_book_recall(after, tok, held).share, recall_control(after, tok, held).share
    said, said_control = generated_recall(after, tok, held).share, generated_recall(after, tok, held, "control_question").share
    print(f"tiny learner: trained sentences {start_sentence:.2f} -> {end_sentence:.2f}; held-out wording, said"
          f" {said:.2f} (control {said_control:.2f}); bare-value choice {choice:.2f} (control {choice_control:.2f})")
    assert start_sentence <= 0.5 and end_sentence >= 0.9  # the LoRA learned what it was shown
    assert said - said_control >= 0.15  # and names the right viewer's value for a question it never saw (0.20)
    assert choice - choice_control <= 0.2  # which a forced choice on a form never trained does not see
