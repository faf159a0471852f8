"""Self-rehearsal against forgetting: before a window is trained, the model as it is now (the
base model with the adapter training starts from) answers a fixed set of everyday questions in
the character's prompt, and its own answers are trained beside the window's examples. Where the
window has nothing to teach, the targets are what the model already says, so the update is pulled
towards staying where it was (after self-synthesized rehearsal, Huang et al. 2024). The questions
(rehearsal_prompts.txt) are not the gate's general text, so the gate still measures what it
claims to. Measured in docs/benchmarks.md ("What a recipe teaches, and what it wears down").
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_model.train.jsonl import read_jsonl

PROMPTS = Path(__file__).with_name("rehearsal_prompts.txt")


def prompts() -> list[str]:
    return [line.strip() for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def own_answers(model: Any, tokenizer: Any, system: str, questions: list[str], max_new_tokens: int = 48,
                batch: int = 16) -> list[str]:
    """The model's greedy answers to the questions, a batch at a time (left-padded)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for start in range(0, len(questions), batch):
            texts = [tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                    {"role": "user", "content": q}],
                                                   add_generation_prompt=True, tokenize=False)
                     for q in questions[start:start + batch]]
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token_id = pad
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            out += [tokenizer.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in ids]
    finally:
        tokenizer.padding_side = side
    return out


def self_rehearsal(model: Any, tokenizer: Any, system: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to `n` examples (kind "rehearsal"): everyday questions answered greedily by `model`
    itself, each question once. Never the same answer twice: measured, 120 examples (the 40
    answers three times) kept less of what a window taught and wore ordinary text down more than
    the 40 once (docs/benchmarks.md)."""
    questions = prompts()
    random.Random(seed).shuffle(questions)
    asked = questions[:min(n, len(questions))]
    return [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}], "kind": "rehearsal", "source_turns": []}
            for q, a in zip(asked, own_answers(model, tokenizer, system, asked), strict=True) if a]


def with_rehearsal(base: Path | str, adapter: Path | None, data: Path, out: Path, share: float,
                   seed: int = 0) -> Path:
    """`data` and, after it, `share` self-rehearsal examples per example in it (at most one per
    question in rehearsal_prompts.txt), written to `out`
    (kept: a resumed run reads the same file instead of generating again). `data` itself when
    share is 0 or it holds nothing."""
    if out.is_file():
        return out
    examples = read_jsonl(data)
    n = round(share * len(examples))
    if n == 0:
        return data
    system = next((m["content"] for ex in examples for m in ex["messages"][:1] if m["role"] == "system"), "")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    own = self_rehearsal(model, tokenizer, system, n, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(data.read_text(encoding="utf-8")
                   + "".join(json.dumps(ex, ensure_ascii=False, sort_keys=True) + "\n" for ex in own), encoding="utf-8")
    tmp.replace(out)
    return out
