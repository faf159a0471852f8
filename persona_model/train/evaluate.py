"""The numbers the gates compare (docs/learning.md):

- closed-book recall: for each held-out question about a memory, asked with no memories in the
  prompt, does the right answer (the bare value, a form never trained on) have the highest
  log-likelihood among it and its distractors (values that differ only in being another fact's)?
  Or, generated: does the model's own greedy answer name the value and no distractor? Each beside
  its control (the same candidates when the question does not ask for them).
- negative log-likelihood per token of texts the model should keep saying well: held-out
  in-character replies (persona fidelity), earlier windows' facts and a fixed general text
  (retention).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from persona_model.generation import Sampling
from persona_model.train.sft import IGNORE, encode


@dataclass(frozen=True, slots=True)
class Recall:
    right: int
    asked: int

    @property
    def share(self) -> float:
        return self.right / self.asked if self.asked else 0.0


def _answer_logprob(model: Any, tokenizer: Any, system: str, question: str, answers: Sequence[str]) -> list[float]:
    """Summed log-probability of each answer (and its end token) as the reply to the question."""
    rows = [encode({"messages": [{"role": "system", "content": system}, {"role": "user", "content": question},
                                 {"role": "assistant", "content": a}]}, tokenizer, 1024) for a in answers]
    width = max(len(x) for x, _ in rows)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows])
    labels = torch.tensor([y + [IGNORE] * (width - len(y)) for _, y in rows])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:].to(device)
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (target != IGNORE)).sum(dim=1).tolist()


def closed_book_recall(model: Any, tokenizer: Any, items: Sequence[dict[str, Any]]) -> Recall:
    """Items as curation writes them to heldout_facts.jsonl: question, answer, distractors, system."""
    right = 0
    for item in items:
        scores = _answer_logprob(model, tokenizer, item.get("system", ""), item["question"],
                                 [item["answer"], *item["distractors"]])
        right += int(max(range(len(scores)), key=scores.__getitem__) == 0)
    return Recall(right, len(items))


UNRELATED = "What is your favourite colour?"  # a question no fact answers: the first control


def recall_control(model: Any, tokenizer: Any, items: Sequence[dict[str, Any]]) -> Recall:
    """How often the right answer wins when it was not asked for: the same candidates after an
    unrelated question, and after the same question about someone else (`control_question`, as
    curation writes it); the higher of the two. A model that favours a value whatever is asked
    (it was trained more often) scores high on the first; one that answers every cat question
    with Miso, on the second. What recall shows above this is what the question itself brings back."""
    unrelated = closed_book_recall(model, tokenizer, [{**item, "question": UNRELATED} for item in items])
    asked = [{**item, "question": item["control_question"]} for item in items if item.get("control_question")]
    other = closed_book_recall(model, tokenizer, asked) if asked else unrelated
    return max(unrelated, other, key=lambda r: r.share)


def said(value: str, text: str) -> bool:
    """Whether a reply names the value (whole words, any case)."""
    return re.search(rf"(?<!\w){re.escape(value.strip())}(?!\w)", text, re.I) is not None


def generate_reply(model: Any, tokenizer: Any, system: str, question: str, max_new_tokens: int = 32,
                   sampling: Sampling | None = None, seed: int = 0) -> str:
    """The model's own answer to a question, with no memories in the prompt: greedy, or drawn as
    `sampling` draws (its length, temperature, top-p and repetition penalty) from `seed`."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    device = next(model.parameters()).device
    drawn: dict[str, Any] = {"do_sample": False}
    if sampling is not None:
        torch.manual_seed(seed)
        greedy, max_new_tokens = sampling.temperature <= 0, sampling.max_new_tokens
        drawn = {"do_sample": not greedy, "temperature": None if greedy else sampling.temperature,
                 "top_p": None if greedy else sampling.top_p, "repetition_penalty": sampling.repetition_penalty}
    with torch.inference_mode():
        out = model.generate(**{k: v.to(device) for k, v in ids.items()}, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **drawn)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))


def generated_recall(model: Any, tokenizer: Any, items: Sequence[dict[str, Any]],
                     question: str = "question") -> Recall:
    """The other way to score: the model answers in its own words (greedy) and is right when the
    reply names the true value and no distractor. `question="control_question"` asks about
    someone else instead: then "right" means it named this fact's value anyway (the control)."""
    right = 0
    for item in items:
        reply = generate_reply(model, tokenizer, item.get("system", ""), item.get(question) or UNRELATED)
        right += int(said(item["answer"], reply) and not any(said(d, reply) for d in item["distractors"]))
    return Recall(right, len(items))


def reply_logprob(model: Any, tokenizer: Any, example: dict[str, Any]) -> tuple[float, int]:
    """The log-likelihood (nats) of an example's last assistant message after the rest, and its
    token count."""
    device = next(model.parameters()).device
    x, y = encode(example, tokenizer, 1024)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([x], device=device), labels=torch.tensor([y], device=device))
    n = sum(1 for t in y[1:] if t != IGNORE)
    return -float(out.loss) * n, n


def reply_nll(model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]]) -> float:
    """Mean negative log-likelihood per target token of the examples' last assistant messages."""
    scored = [reply_logprob(model, tokenizer, ex) for ex in examples]
    count = sum(n for _, n in scored)
    return -sum(lp for lp, _ in scored) / count if count else float("nan")


def text_nll(model: Any, tokenizer: Any, text: str, window: int = 256) -> float:
    """Mean negative log-likelihood per token of a plain text (windows of `window` tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total = count = 0.0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, max(len(ids) - 1, 1), window):
            chunk = torch.tensor([ids[start:start + window + 1]], device=device)
            if chunk.shape[1] < 2:
                break
            out = model(input_ids=chunk, labels=chunk)
            total += float(out.loss) * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return total / count if count else float("nan")
