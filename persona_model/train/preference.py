"""Learning from the operator's marks (docs/learning.md#marks): the replies marked good and bad
(`omoide logs review`, the avatar channel's `review`) train the adapter by KTO, which takes
unpaired thumbs-up and thumbs-down; a corrected reply and the one it corrects train it by DPO, a
pair for the same prompt. Both with TRL, on the LoRA that supervised training just produced, a
frozen copy of it as the reference.

Its gate is held-out marks, never trained on: the implicit reward of a reply is how much likelier
(per token, in nats) the adapter finds it than the base model does (one reference for the live
adapter and the candidate alike); the accuracy is the share of
held-out (liked, disliked) pairs, each corrected reply against its original included, in which the
liked one gets the higher reward. The base model scores 0.5 (every reward is 0).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from datasets.utils.logging import disable_progress_bar
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from persona_model.train.evaluate import reply_logprob

log = logging.getLogger(__name__)
Messages = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class Mark:
    prompt: tuple[tuple[str, str], ...]  # (role, content) before the reply
    reply: str
    liked: bool
    turn_id: str = ""


@dataclass(frozen=True, slots=True)
class Pair:
    prompt: tuple[tuple[str, str], ...]
    chosen: str  # the operator's correction
    rejected: str  # what she said
    turn_id: str = ""


@dataclass
class Marks:
    marks: list[Mark] = field(default_factory=list)  # good and bad, unpaired
    pairs: list[Pair] = field(default_factory=list)  # corrected against original

    def __len__(self) -> int:
        return len(self.marks) + len(self.pairs)

    @property
    def duels(self) -> int:
        """How many (liked, disliked) pairs reward_accuracy scores: every liked mark against every
        disliked one, and each correction against its original."""
        return sum(m.liked for m in self.marks) * sum(not m.liked for m in self.marks) + len(self.pairs)


@dataclass(frozen=True, slots=True)
class PreferenceSettings:
    beta: float = 0.1  # how far from the reference the adapter may move (KTO's and DPO's beta)
    lr: float = 5e-4  # the LoRA's learning rate in this stage
    epochs: float = 3.0
    batch: int = 4
    max_length: int = 512
    heldout: float = 0.25  # share of marks kept out of training, for the gate
    min_marks: int = 8  # fewer marks than this: no preference stage (too few to hold any out)
    seed: int = 0


def _prompt(messages: Sequence[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(m.get("role")), str(m.get("content"))) for m in messages)


def marks_from(turns: Iterable[dict[str, Any]]) -> Marks:
    """The marks in exported turns (`omoide logs export` rows: metadata.review, corrected_text)."""
    out = Marks()
    for t in turns:
        meta, msgs = t.get("metadata") or {}, t.get("messages") or []
        if len(msgs) < 2 or msgs[-1].get("role") != "assistant" or not str(msgs[-1].get("content", "")).strip():
            continue
        review, prompt, said = meta.get("review"), _prompt(msgs[:-1]), str(msgs[-1]["content"])
        turn = str(meta.get("turn_id") or "")
        if review in ("good", "bad"):
            out.marks.append(Mark(prompt, said, review == "good", turn))
        elif review == "corrected" and str(meta.get("corrected_text") or "").strip():
            out.pairs.append(Pair(prompt, str(meta["corrected_text"]), said, turn))
    return out


def held_out(key: str, share: float) -> bool:
    """Whether the mark known by `key` (its turn id) is held out: decided by the key alone, so a
    mark held out once is never trained on by a later window, however many marks come after."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def split(marks: Marks, share: float) -> tuple[Marks, Marks]:
    """(train, held out): about `share` of the marks, each by its own turn id (or its text)."""
    train, held = Marks(), Marks()
    for m in marks.marks:
        (held if held_out(m.turn_id or m.reply, share) else train).marks.append(m)
    for p in marks.pairs:
        (held if held_out(p.turn_id or p.chosen, share) else train).pairs.append(p)
    return train, held


def _conversational(prompt: tuple[tuple[str, str], ...]) -> Messages:
    return [{"role": r, "content": c} for r, c in prompt]


def _example(prompt: tuple[tuple[str, str], ...], reply: str) -> dict[str, Any]:
    return {"messages": [*_conversational(prompt), {"role": "assistant", "content": reply}]}


def rewards(model: Any, tokenizer: Any, prompt: tuple[tuple[str, str], ...], replies: Sequence[str]) -> list[float]:
    """Each reply's implicit reward: log-likelihood per token under the model (its active adapter)
    less under the base model (the adapter switched off)."""
    out = []
    for reply in replies:
        lp, n = reply_logprob(model, tokenizer, _example(prompt, reply))
        with model.disable_adapter():
            base, _ = reply_logprob(model, tokenizer, _example(prompt, reply))
        out.append((lp - base) / max(1, n))
    return out


def reward_accuracy(model: Any, tokenizer: Any, held: Marks) -> tuple[float, int]:
    """The share of held-out (liked, disliked) pairs whose liked reply gets the higher reward (ties
    count half), and how many pairs: every liked mark against every disliked one, and each
    correction against its original."""
    liked = [r for m in held.marks if m.liked for r in rewards(model, tokenizer, m.prompt, [m.reply])]
    disliked = [r for m in held.marks if not m.liked for r in rewards(model, tokenizer, m.prompt, [m.reply])]
    duels = [(a, b) for a in liked for b in disliked]
    for p in held.pairs:
        chosen, rejected = rewards(model, tokenizer, p.prompt, [p.chosen, p.rejected])
        duels.append((chosen, rejected))
    if not duels:
        return float("nan"), 0
    wins = sum(1.0 if a > b + 1e-9 else 0.5 if abs(a - b) <= 1e-9 else 0.0 for a, b in duels)
    return wins / len(duels), len(duels)


def train_preferences(base: Path | str, adapter: Path, train: Marks, out: Path,
                      settings: PreferenceSettings = PreferenceSettings()) -> Path:
    """Train `adapter` (a LoRA on `base`) on the marks: KTO on the unpaired ones (a correction
    counts as a liked reply and its original as a disliked one there too), then DPO on the
    corrections; the adapter is saved to `out` and its path returned. During training TRL's
    reference is a frozen copy of the adapter as the stage found it (each stage's own)."""
    torch.manual_seed(settings.seed)
    disable_progress_bar()  # datasets' bars for its tokenising, between `omoide train`'s own lines
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                           str(adapter), is_trainable=True)
    common = dict(learning_rate=settings.lr, num_train_epochs=settings.epochs, beta=settings.beta,
                  per_device_train_batch_size=settings.batch, max_length=settings.max_length,
                  report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
                  seed=settings.seed, dataset_num_proc=None)
    unpaired = [{"prompt": _conversational(m.prompt), "completion": [{"role": "assistant", "content": m.reply}],
                 "label": m.liked} for m in train.marks]
    unpaired += [row for p in train.pairs for row in (
        {"prompt": _conversational(p.prompt), "completion": [{"role": "assistant", "content": p.chosen}], "label": True},
        {"prompt": _conversational(p.prompt), "completion": [{"role": "assistant", "content": p.rejected}],
         "label": False})]
    if len(unpaired) >= 2:
        KTOTrainer(model=model, args=KTOConfig(output_dir=str(out / "kto"), **common),  # type: ignore[arg-type]
                   train_dataset=Dataset.from_list(unpaired), processing_class=tokenizer).train()
    if "ref" in model.peft_config:  # the KTO stage's frozen copy: DPO makes its own of the adapter as it is now
        model.delete_adapter("ref")
    if train.pairs:
        pairs = [{"prompt": _conversational(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
                  "rejected": [{"role": "assistant", "content": p.rejected}]} for p in train.pairs]
        DPOTrainer(model=model, args=DPOConfig(output_dir=str(out / "dpo"), **common),  # type: ignore[arg-type]
                   train_dataset=Dataset.from_list(pairs), processing_class=tokenizer).train()
    model.save_pretrained(str(out / "adapter"), selected_adapters=["default"])  # not TRL's frozen reference copy
    return out / "adapter"
