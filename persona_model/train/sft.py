"""LoRA SFT of the persona model on one curated window (`train.jsonl`, persona_model/train/curate.py).

- Loss only on the character's tokens: the last assistant message of each example (and its end
  token); the prompt, the viewers' lines and earlier replies are context.
- Packing: short examples share a row (first-fit, longest first) with a block-diagonal causal mask
  and positions restarting at each example, so no example sees another; far less padding than one
  example per row.
- Gradient accumulation, a progress bar with loss and tokens per second, a checkpoint every
  `checkpoint_every` optimizer steps (adapter, optimizer, step) from which an interrupted run
  resumes to the same result, and a seed that makes the run repeatable.
- CPU for small models; the GPU when there is one.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_model.train.jsonl import read_jsonl

IGNORE = -100


class TrainingError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SftSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"
    lr: float = 2e-3
    epochs: float = 3.0
    max_steps: int = 0  # optimizer steps; 0: as many as `epochs` take
    min_steps: int = 0  # at least this many, whatever `epochs` takes: a small window gets more passes
    seq_len: int = 512  # tokens per packed row
    rows: int = 4  # rows per micro-batch
    accumulate: int = 1  # micro-batches per optimizer step
    max_example_tokens: int = 512  # longer prompts lose their oldest context first
    checkpoint_every: int = 50
    seed: int = 0


@dataclass
class SftResult:
    adapter: Path
    steps: int
    tokens: int  # real (non-padding) tokens seen
    target_tokens: int  # tokens the loss was on
    seconds: float
    losses: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def encode(example: dict[str, Any], tokenizer: Any, max_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example: labels are IGNORE except on the last assistant message
    and its end token."""
    msgs = example.get("messages") or []
    if len(msgs) < 2 or msgs[-1].get("role") != "assistant":
        raise TrainingError("an example must end with the character's message")
    prefix = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in msgs[:-1]],
                                           add_generation_prompt=True, tokenize=False)
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    tail = tokenizer(msgs[-1]["content"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    tail = tail[:max_tokens // 2]
    head = head[-(max_tokens - len(tail)):]  # keep the end of the context: the question
    return head + tail, [IGNORE] * len(head) + tail


def pack(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Rows of example indexes, each row's lengths summing to at most seq_len (first fit,
    longest first)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = min(lengths[i], seq_len)
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_len - n)
    return rows


def collate(rows: list[list[int]], encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """A micro-batch: input ids, labels, positions restarting per example, and a 4D mask that lets
    each token see only the earlier tokens of its own example."""
    width = max(sum(len(encoded[i][0]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row):
            x, y = encoded[i]
            ids[r, at:at + len(x)] = torch.tensor(x)
            labels[r, at:at + len(y)] = torch.tensor(y)
            pos[r, at:at + len(x)] = torch.arange(len(x))
            seg[r, at:at + len(x)] = s
            at += len(x)
        seg[r, at:] = torch.arange(len(row), len(row) + width - at)  # padding: each token alone
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask[:, None]}


def target_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the target tokens, computing the output layer for those positions
    only: with a 49k-word vocabulary that layer is a fifth of a small model's work per token, and
    most tokens are context."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"]).last_hidden_state
    wanted = batch["labels"][:, 1:]
    keep = wanted != IGNORE
    logits = inner.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), wanted[keep])


def read_examples(path: Path) -> list[dict[str, Any]]:
    out = read_jsonl(path)
    if not out:
        raise TrainingError(f"{path}: no examples")
    return out


def train(base: Path | str, data: Path, out: Path, settings: SftSettings = SftSettings(),  # noqa: C901 (the training loop with its checkpoint and resume)
          start_adapter: Path | None = None, progress: bool = True,
          stop_after: int | None = None, on_step: Callable[[int, float], None] | None = None,
          adapter: PeftConfig | None = None) -> SftResult:
    """Train a LoRA adapter on `data` into `out` (resuming from `out/checkpoint` if there is one).
    `start_adapter` continues an earlier adapter instead of a fresh one; `adapter` trains another
    peft method (OSF: bench/continual.py) instead of the settings' LoRA. `stop_after` ends the run
    after that many optimizer steps, as an interruption would (tests)."""
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if start_adapter is not None:
        model = PeftModel.from_pretrained(model, str(start_adapter), is_trainable=True)
    elif adapter is not None:
        model = get_peft_model(model, adapter)
    else:
        model = get_peft_model(model, LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                                                 lora_dropout=settings.dropout,
                                                 target_modules=settings.target_modules, task_type="CAUSAL_LM"))
    model.to(device).train()
    longest = min(settings.max_example_tokens, settings.seq_len)  # an example never outgrows a row
    encoded = [encode(ex, tokenizer, longest) for ex in read_examples(data)]
    rows = pack([len(x) for x, _ in encoded], settings.seq_len)
    per_epoch = math.ceil(len(rows) / settings.rows / settings.accumulate)
    total = settings.max_steps or max(1, settings.min_steps, round(per_epoch * settings.epochs))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / total)
    step, losses = 0, []
    checkpoint = out / "checkpoint"
    if (checkpoint / "state.pt").is_file():  # an interrupted run: go on from its last checkpoint
        state = torch.load(checkpoint / "state.pt", map_location=device, weights_only=False)
        if state["settings"] != asdict(settings) or state["data"] != str(data):
            raise TrainingError(f"{checkpoint} is from another run (other data or settings): delete it to start over")
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, losses = state["step"], state["losses"]
    order_rng = random.Random(settings.seed)
    micro = [rows[i:i + settings.rows] for i in range(0, len(rows), settings.rows)]
    schedule_of_batches: list[list[list[int]]] = []
    while len(schedule_of_batches) < total * settings.accumulate:
        epoch = micro[:]
        order_rng.shuffle(epoch)
        schedule_of_batches += epoch
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="training", unit="step")
    tokens = targets = 0
    started = time.perf_counter()
    while step < total and (stop_after is None or step < stop_after):
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for k in range(settings.accumulate):
            rows_now = schedule_of_batches[step * settings.accumulate + k]
            batch = {n: t.to(device) for n, t in collate(rows_now, encoded, tokenizer.pad_token_id or 0).items()}
            loss = target_loss(model, batch) / settings.accumulate
            loss.backward()
            step_loss += float(loss.detach())
            tokens += sum(len(encoded[i][0]) for row in rows_now for i in row)
            targets += int((batch["labels"] != IGNORE).sum())
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(step_loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        if on_step is not None:
            on_step(step, step_loss)
        if step % settings.checkpoint_every == 0 or step == total:
            checkpoint.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint / "state.pt.tmp"
            torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step, "losses": losses,
                        "settings": asdict(settings), "data": str(data)}, tmp)
            tmp.replace(checkpoint / "state.pt")  # never half-written
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    saved = out / "adapter"
    if step >= total:
        model.save_pretrained(saved)
    return SftResult(saved, step, tokens, targets, seconds, losses)
