"""Training throughput: our LoRA trainer (packed rows, loss on the character's words) against a
plain peft + transformers Trainer (one example per row, padded batches), on the same curated data,
model, LoRA settings and number of examples, in one run. Tokens/s counts real (non-padding)
tokens.

The data is a real curated window: 200 generated viewers' facts through `curate` (questions in
three wordings, answered in character), plus the character's replies to them, each with the
persona's system text and the conversation before it as the runtime logs it (`--history`), so
example lengths vary the way a window's do: short questions beside long replies.

    python bench/train_throughput.py                 # the learner tiny model
    python bench/train_throughput.py --like smollm2-135m --examples 64   # random weights, real shape
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
)

from persona_model import tiny  # noqa: E402
from persona_model.prompt import DEFAULT_SYSTEM  # noqa: E402
from persona_model.train.curate import CurationSettings, curate  # noqa: E402
from persona_model.train.sft import SftSettings, encode, train  # noqa: E402
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


def baseline(base: Path, data: Path, out: Path, s: SftSettings, batch: int) -> tuple[float, int]:
    """(seconds, real tokens) for one epoch with transformers' Trainer, padded batches."""
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
                             dataloader_drop_last=False)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, sum(len(r["input_ids"]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", default="learner", choices=sorted(tiny.SHAPES))
    ap.add_argument("--examples", type=int, default=480)
    ap.add_argument("--batch", type=int, default=8, help="examples per batch for the baseline")
    ap.add_argument("--seq-len", type=int, default=512, help="our packed row length")
    ap.add_argument("--history", type=int, default=12,
                    help="exchanges of conversation before each reply, as logged (default 12; 0: none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = tiny.build(work / "model", like=args.like, train_steps=0 if args.like != "learner" else 120)
        data = window(work, args.examples, args.history)
        n = len(data.read_text().splitlines())
        tok = AutoTokenizer.from_pretrained(base)
        lengths = [len(encode(json.loads(x), tok, 512)[0]) for x in data.read_text().splitlines()]
        print(f"{args.like}, history {args.history}: {n} examples, {sum(lengths)} tokens (length {min(lengths)}-{max(lengths)},"
              f" mean {sum(lengths) / n:.0f}); torch threads {torch.get_num_threads()}")
        # ours: rows of seq_len tokens, as many rows per step as hold about `batch` examples
        rows = max(1, round(args.batch * (sum(lengths) / n) / args.seq_len))
        s = SftSettings(epochs=1.0, rows=rows, seq_len=args.seq_len, checkpoint_every=10**9)
        t_base, tokens = baseline(base, data, work / "baseline", s, args.batch)
        ours = train(base, data, work / "ours", s, progress=False)
        print(f"{'trainer':<34} {'seconds':>8} {'tokens/s':>9}")
        print(f"{'transformers Trainer, padded':<34} {t_base:>8.1f} {tokens / t_base:>9.0f}")
        print(f"{'omoide (packed, ' + str(rows) + ' rows x ' + str(args.seq_len) + ')':<34} {ours.seconds:>8.1f}"
              f" {ours.tokens / ours.seconds:>9.0f}   {(ours.tokens / ours.seconds) / (tokens / t_base):.2f}x")


if __name__ == "__main__":
    main()
