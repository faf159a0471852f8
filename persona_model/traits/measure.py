"""The trait score a character's weights and prompt give: for each situation, the mean
log-probability per token of the trait-high reply minus that of the trait-low reply, as the
character's reply under her prompt; the score is the mean over situations (nats per token; 0 is
indifferent, positive leans high). `high_share` is how often the high reply wins (chance: 0.5).

Every row shares the system prompt (and any history), so that part is run once and its cache
reused: the 84 replies of a trait cost about as much as their own tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from persona_model.train.sft import IGNORE, encode
from persona_model.traits import Situation, Trait


@dataclass(frozen=True, slots=True)
class TraitScore:
    trait: str
    score: float  # mean over situations of (high − low) log-probability per token, nats
    high_share: float  # share of situations whose high reply is the likelier
    situations: int

    def __str__(self) -> str:
        return f"{self.trait} {self.score:+.3f} (high wins {self.high_share:.2f} of {self.situations})"


Message = dict[str, str]


def _common(rows: Sequence[list[int]]) -> int:
    """Length of the prefix every row shares."""
    first, n = rows[0], min(len(r) for r in rows)
    for r in rows[1:]:
        n = next((i for i in range(n) if r[i] != first[i]), n)
    return n


@dataclass(frozen=True, slots=True)
class Chunk:
    rows: list[list[int]]  # the token ids of this chunk's rows, whole
    shared: int  # how many leading tokens every row shares (run once, from the cache)
    out: Any  # the model's output for the rows' tokens after `shared`, right-padded
    last: torch.Tensor  # (1, 1, vocab) logits at the last shared position: they predict token `shared`


def prefixed(model: Any, rows: Sequence[list[int]], batch: int = 16, min_shared: int | None = None,
             hidden: bool = False) -> Iterator[Chunk]:
    """Run rows that share a prefix (a system prompt, a history): the prefix once, then each chunk
    of `batch` rows from a copy of its cache. `min_shared` caps the shared part (so a row's
    scored tokens are never inside it)."""
    shared = _common(rows)
    shared = max(1, min(shared, min_shared) if min_shared is not None else shared)
    device = next(model.parameters()).device
    with torch.inference_mode():
        pre = model(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True)
        last = pre.logits[:, -1:].float()
        for start in range(0, len(rows), batch):
            chunk = [list(r) for r in rows[start:start + batch]]
            width = max(len(r) for r in chunk) - shared
            ids = torch.tensor([r[shared:] + [0] * (width - len(r) + shared) for r in chunk], device=device)
            own = torch.tensor([[1] * (len(r) - shared) + [0] * (width - len(r) + shared) for r in chunk],
                               device=device)
            mask = torch.cat([torch.ones(len(chunk), shared, dtype=torch.long, device=device), own], dim=1)
            cache = copy.deepcopy(pre.past_key_values)
            cache.batch_repeat_interleave(len(chunk))
            out = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                        output_hidden_states=hidden)
            yield Chunk(chunk, shared, out, last)


def reply_logprobs(model: Any, tokenizer: Any, system: str, pairs: Sequence[tuple[str, str]],
                   history: Sequence[Message] = (), batch: int = 16) -> list[float]:
    """Mean log-probability per token of each (user turn, reply) pair's reply (and its end token)
    after the system prompt and the history."""
    head: list[Message] = [{"role": "system", "content": system}, *history] if system else [*history]
    encoded = [encode({"messages": [*head, {"role": "user", "content": u}, {"role": "assistant", "content": r}]},
                      tokenizer, 1 << 16) for u, r in pairs]
    first_label = min(next(i for i, y in enumerate(labels) if y != IGNORE) for _, labels in encoded)
    out: list[float] = []
    done = 0
    with torch.inference_mode():
        for c in prefixed(model, [ids for ids, _ in encoded], batch, min_shared=first_label):
            width = max(len(r) for r in c.rows) - c.shared
            device = c.last.device
            labels = torch.tensor([y[c.shared:] + [IGNORE] * (width - len(y) + c.shared)
                                   for _, y in encoded[done:done + len(c.rows)]], device=device)
            done += len(c.rows)
            logits = torch.cat([c.last.expand(len(c.rows), -1, -1), c.out.logits[:, :-1].float()], dim=1)
            logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            counted = labels != IGNORE
            out += ((logp * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)).tolist()
    return out


def likelihood_score(model: Any, tokenizer: Any, system: str, trait: Trait,
                     situations: Sequence[Situation] | None = None, history: Sequence[Message] = ()) -> TraitScore:
    """The trait score under `system` (the character's prompt as rendered), after `history`."""
    items = list(trait.situations if situations is None else situations)
    pairs = [(s.prompt, s.high) for s in items] + [(s.prompt, s.low) for s in items]
    lp = reply_logprobs(model, tokenizer, system, pairs, history)
    diffs = [h - lo for h, lo in zip(lp[:len(items)], lp[len(items):], strict=True)]
    return TraitScore(trait.name, sum(diffs) / len(diffs), sum(d > 0 for d in diffs) / len(diffs), len(diffs))
