"""Training throughput: our LoRA trainer (packed rows, loss on the character's words) against
peft + transformers' Trainer as a careful user tunes it (`train_sampling_strategy =
"group_by_length"`, transformers' padding-free packing collator `DataCollatorWithFlattening`,
no gradient clipping, as ours), and the untuned Trainer (one example per row, padded batches,
clipping at 1.0) for reference, on the same curated data, model, LoRA settings and number of
examples, in one run. Each side first trains a few examples untimed (warm-up), and the order
of the sides turns round every round. Tokens/s counts real (non-padding) tokens.

The data is a real curated window: 200 generated viewers' facts through `curate` (questions in
three wordings, answered in character), plus the character's replies to them, each with the
persona's system text and the conversation before it as the runtime logs it (`--history`), so
example lengths vary the way a window's do: short questions beside long replies.

    python bench/train_throughput.py                 # the learner tiny model
    python bench/train_throughput.py --like smollm2-135m --examples 64   # random weights, real shape
    python bench/train_throughput.py --like bundled --examples 64        # SmolLM2-135M-Instruct itself
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    Trainer,
    TrainingArguments,
)

from persona_model import tiny  # noqa: E402
from persona_model.prompt import DEFAULT_SYSTEM  # noqa: E402
from persona_model.train.curate import CurationSettings, curate  # noqa: E402
from persona_model.train.sft import SftSettings, encode, train  # noqa: E402
from runtime.models import bundled_llm  # noqa: E402
from tests.memory_set import generate  # noqa: E402


def window(folder: Path, examples: int, history: int) -> Path:
    """A curated window from a generated stream: each viewer states a fact and the character
    answers; each reply's prompt carries the `history` exchanges before it, as the runtime logs
    them (turn.history_messages = 24 by default: 12 exchanges)."""
    cases = generate(viewers=200, per_viewer=1)
    memories = [{"id": i, "kind": "fact", "text": c.fact, "subject": c.fact.split("my ")[-1].split(" ")[0],
                 "viewer_name": c.viewer, "source_turns": []} for i, c in enumerate(cases)]
    (folder / "memories.jsonl").write_text("".join(json.dumps(m) + "\n" for m in memories))
    system = DEFAULT_SYSTEM.format(name="Testa")
    said: list[dict[str, str]] = []
    turns = []
    for i, c in enumerate(cases):
        user = {"role": "user", "content": f"[viewer chat] {c.viewer}: {c.fact.split(': ', 1)[1]}"}
        reply = {"role": "assistant", "content": "Oh, that is lovely! Tell me more about it, I want to know."}
        context = said[len(said) - 2 * history:] if history else []
        turns.append({"messages": [{"role": "system", "content": system}, *context, user, reply],
                      "metadata": {"turn_id": f"t{i}"}})
        said += [user, reply]
    (folder / "turns.jsonl").write_text("".join(json.dumps(t) + "\n" for t in turns))
    curate(folder / "w", folder / "turns.jsonl", folder / "memories.jsonl", system=system, persona_name="Testa",
           settings=CurationSettings(persona_examples=False, heldout_replies=0))
    rows = (folder / "w" / "train.jsonl").read_text().splitlines()[:examples]
    (folder / "data.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "data.jsonl"


def baseline(base: Path, data: Path, out: Path, s: SftSettings, batch: int, tuned: bool) -> tuple[float, int]:
    """(seconds, real tokens) for one epoch with transformers' Trainer: tuned (batches of similar
    length, flattened into one row without padding, no clipping) or as it comes (padded)."""
    torch.manual_seed(s.seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout,
                                      target_modules=s.target_modules, task_type="CAUSAL_LM"))
    rows = []
    for line in data.read_text().splitlines():
        ids, labels = encode(json.loads(line), tok, s.max_example_tokens)
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch, num_train_epochs=1,
                             learning_rate=s.lr, save_strategy="no", report_to=[], logging_strategy="no",
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=s.seed,
                             dataloader_drop_last=False,
                             **({"train_sampling_strategy": "group_by_length", "max_grad_norm": 0.0} if tuned else {}))
    collator = (DataCollatorWithFlattening() if tuned
                else DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, sum(len(r["input_ids"]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", default="learner", choices=[*sorted(tiny.SHAPES), "bundled"],
                    help="a shape with random weights, or bundled: SmolLM2-135M-Instruct itself")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds; the order of the sides turns each round")
    ap.add_argument("--examples", type=int, default=480)
    ap.add_argument("--batch", type=int, default=8, help="examples per batch for the baseline")
    ap.add_argument("--seq-len", type=int, default=512, help="our packed row length")
    ap.add_argument("--history", type=int, default=12,
                    help="exchanges of conversation before each reply, as logged (default 12; 0: none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = (bundled_llm(Path("~/.cache/omoide/models").expanduser()) if args.like == "bundled"
                else tiny.build(work / "model", like=args.like, train_steps=0 if args.like != "learner" else 120))
        data = window(work, args.examples, args.history)
        n = len(data.read_text().splitlines())
        tok = AutoTokenizer.from_pretrained(base)
        lengths = [len(encode(json.loads(x), tok, 512)[0]) for x in data.read_text().splitlines()]
        print(f"{args.like}, history {args.history}: {n} examples, {sum(lengths)} tokens (length {min(lengths)}-{max(lengths)},"
              f" mean {sum(lengths) / n:.0f}); torch threads {torch.get_num_threads()}")
        # ours: rows of seq_len tokens, as many rows per step as hold about `batch` examples
        rows = max(1, round(args.batch * (sum(lengths) / n) / args.seq_len))
        s = SftSettings(epochs=1.0, rows=rows, seq_len=args.seq_len, checkpoint_every=10**9)
        warm = work / "warm.jsonl"
        warm.write_text("\n".join(data.read_text().splitlines()[:args.batch]) + "\n")
        sides: dict[str, Callable[[Path, Path], tuple[float, int]]] = {
            "tuned": lambda d, o: baseline(base, d, o, s, args.batch, tuned=True),
            "ours": lambda d, o: (lambda r: (r.seconds, r.tokens))(train(base, d, o, s, progress=False)),
            "untuned": lambda d, o: baseline(base, d, o, s, args.batch, tuned=False),
        }
        for name, run in sides.items():  # warm-up: first-call costs (allocator, kernels) out of the figures
            run(warm, work / f"warm-{name}")
        rates: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for r in range(args.rounds):
            for name in order[r % 3:] + order[:r % 3]:
                seconds, tokens = sides[name](data, work / f"{name}-{r}")
                rates[name].append(tokens / seconds)
        print(f"{'trainer':<58} {'tokens/s (each round)':>24}")
        labels = {"untuned": "transformers Trainer, padded (untuned, for reference)",
                  "tuned": "transformers Trainer, group_by_length + flattening",
                  "ours": f"omoide (packed, {rows} rows x {args.seq_len})"}
        for name in ("untuned", "tuned", "ours"):
            each = " ".join(f"{x:.0f}" for x in rates[name])
            print(f"{labels[name]:<58} {statistics.mean(rates[name]):>8.0f} ({each})")
        print(f"ours against the tuned Trainer: {statistics.mean(rates['ours']) / statistics.mean(rates['tuned']):.2f}x;"
              f" against the untuned: {statistics.mean(rates['ours']) / statistics.mean(rates['untuned']):.2f}x")

if __name__ == "__main__":
    main()
