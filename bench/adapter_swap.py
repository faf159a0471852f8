"""Adapter swap time in a running character: how long a newly activated LoRA holds the model
between two replies, ours against peft's own way of changing adapters on a live model, in one run.

- ours: `LocalPersonaModel.stage_adapter` reads the new weights beside the running model (in a
  worker thread, while replies go on), then `swap_when_free` copies them into the live LoRA tensors
  between replies. Only the copy can delay a turn: that is the figure.
- peft hot-swap: `hotswap_adapter_from_state_dict`, peft's own in-place copy of new weights into
  a loaded adapter (what `hotswap_adapter` does after reading the file with `load_peft_weights`
  and naming its keys);
  the file is read before (timed apart, as our staging), only the copy between replies;
- peft load: `load_adapter(new) + set_adapter(new) + delete_adapter(old)` on the live PeftModel,
  the whole of which must happen between replies.

Both alternate between two rank-16 adapters on every linear layer (random weights, a real
adapter's size), with a short greedy reply generated between swaps, as in the running character.

    python bench/adapter_swap.py                     # tiny and smollm2-135m (random weights)
    python bench/adapter_swap.py --like tiny --swaps 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.utils.hotswap import hotswap_adapter_from_state_dict  # noqa: E402
from peft.utils.save_and_load import _insert_adapter_name_into_state_dict, load_peft_weights  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from persona_model import tiny  # noqa: E402
from persona_model.generation import Sampling  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from runtime.events import Prompt  # noqa: E402

PROMPT = Prompt("<|im_start|>user\nhello there, how are you?<|im_end|>\n<|im_start|>assistant\n", (), 0)


def adapter(base: Path, out: Path, seed: int, rank: int) -> Path:
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(out)
    return out


async def reply(model: LocalPersonaModel) -> None:
    async for _ in model.stream(PROMPT):
        pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(like: str, swaps: int, rank: int, work: Path) -> dict[str, float]:
    base = tiny.build(work / like, like=like, train_steps=0)
    a, b = adapter(base, work / f"{like}-a", 1, rank), adapter(base, work / f"{like}-b", 2, rank)
    sampling = Sampling(max_new_tokens=4, temperature=0)

    ours = LocalPersonaModel.load(base, adapter_path=a, adapter_name="a", sampling=sampling)
    staged: list[float] = []
    for i in range(swaps):
        await reply(ours)
        path, name = (b, "b") if i % 2 == 0 else (a, "a")
        t0 = time.perf_counter()
        await asyncio.to_thread(ours.stage_adapter, path, name)
        staged.append(time.perf_counter() - t0)
        held = await ours.swap_when_free()
        assert held is not None and ours.adapter == name
    held_ours = ours.swaps[:]
    del ours

    hot = LocalPersonaModel.load(base, adapter_path=a, sampling=sampling)
    config = LoraConfig.from_pretrained(str(a))
    read_hot: list[float] = []
    held_hot: list[float] = []
    for i in range(swaps):
        await reply(hot)
        path = b if i % 2 == 0 else a
        t0 = time.perf_counter()
        read = await asyncio.to_thread(load_peft_weights, str(path), "cpu")
        state = _insert_adapter_name_into_state_dict(read, adapter_name="default", parameter_prefix="lora_")
        t1 = time.perf_counter()
        hotswap_adapter_from_state_dict(hot.model, state, adapter_name="default", config=config)
        held_hot.append(time.perf_counter() - t1)
        read_hot.append(t1 - t0)
    del hot

    peft_model = LocalPersonaModel.load(base, adapter_path=a, sampling=sampling)
    live = peft_model.model
    current = "default"
    held_peft: list[float] = []
    for i in range(swaps):
        await reply(peft_model)
        path = b if i % 2 == 0 else a
        t0 = time.perf_counter()
        new = f"v{i}"
        live.load_adapter(str(path), adapter_name=new)
        live.set_adapter(new)
        live.delete_adapter(current)
        held_peft.append(time.perf_counter() - t0)
        current = new
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())
    return {"params_m": params / 1e6, "ours_p50": pct(held_ours, 0.5), "ours_p99": pct(held_ours, 0.99),
            "hot_p50": pct(held_hot, 0.5), "hot_p99": pct(held_hot, 0.99),
            "peft_p50": pct(held_peft, 0.5), "peft_p99": pct(held_peft, 0.99),
            "stage_p50": statistics.median(staged), "read_hot_p50": statistics.median(read_hot)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", action="append", choices=sorted(tiny.SHAPES), help="shapes (default: tiny, smollm2-135m)")
    ap.add_argument("--swaps", type=int, default=100)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"adapter swap between replies: {args.swaps} swaps, rank {args.rank} on every linear layer, CPU"
          f" ({torch.get_num_threads()} threads)")
    print("held between replies, p50 / p99 (ms); the file's read before, in the background, p50 (ms)")
    print(f"{'model':<14}{'params':>8}  {'ours':>13}  {'peft hot-swap':>13}  {'peft load':>13}"
          f"  {'hot-swap/ours p99':>17}  {'read: ours':>10}  {'read: peft':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for like in args.like or ["tiny", "smollm2-135m"]:
            r = asyncio.run(measure(like, args.swaps, args.rank, Path(tmp)))
            cols = [f"{r[k + '_p50'] * 1e3:.1f} / {r[k + '_p99'] * 1e3:.1f}" for k in ("ours", "hot", "peft")]
            print(f"{like:<14}{r['params_m']:>7.1f}M  {cols[0]:>13}  {cols[1]:>13}  {cols[2]:>13}"
                  f"  {r['hot_p99'] / r['ours_p99']:>16.2f}x  {r['stage_p50'] * 1e3:>10.1f}  {r['read_hot_p50'] * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
