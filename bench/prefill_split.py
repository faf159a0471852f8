"""Would computing the viewer's line while recall runs (and the memories after it) bring the first
token sooner? On the bundled SmolLM2-135M-Instruct (its GGUF, de-quantized to float32 as the
runtime loads it), after a cached prompt of about 500 tokens, in one run:

- the time of one forward pass over N new tokens after 700 cached ones (the turn's own part of a
  prompt is 40-120 tokens);
- the turn's part as the runtime computes it (recall's embedding, then line and memories in one
  pass) against the split (the embedding beside the line's pass, then the memories' pass).

    python bench/prefill_split.py            # about two minutes
"""

from __future__ import annotations

import copy
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: E402

from memory.embed import Embedder  # noqa: E402
from runtime import bundled  # noqa: E402

TRIALS = 9


def main() -> None:
    gguf = bundled.locate("llm")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    embedder = Embedder(bundled.locate("embedding"), runtime="torch")  # as before 2026-12-05: the slower side

    def ids(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def cached(prefix: list[int]) -> Any:
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=torch.tensor([prefix]), past_key_values=cache, use_cache=True)
        return cache

    def forward(cache: Any, new: list[int]) -> None:
        with torch.inference_mode():
            model(input_ids=torch.tensor([new]), past_key_values=cache, use_cache=True)

    def median_ms(xs: list[float]) -> float:
        return statistics.median(xs) * 1000

    words = ("the forest is quiet tonight and the stream is warm with friends " * 200).split()
    text = ids(" ".join(words))
    base = cached(text[:700])
    print("one forward pass after 700 cached tokens (median of", TRIALS, "):")
    for n in (1, 8, 22, 40, 60, 80, 120, 200):
        xs = []
        for _ in range(TRIALS):
            cache = copy.deepcopy(base)
            s = time.perf_counter()
            forward(cache, text[700:700 + n])
            xs.append(time.perf_counter() - s)
        print(f"  {n:4d} new tokens {median_ms(xs):7.1f} ms")

    prefix = ids("<|im_start|>system\n" + "You are Komorebi, a forest spirit who streams. " * 40 + "<|im_end|>\n")
    query = "do you remember what I told you about my cat yesterday?"
    line = ids(f"<|im_start|>user\nChat: Mika: {query}<|im_end|>\n")
    memories = ids("<|im_start|>system\nThings you remember:\n- Mika has a cat called Pebble\n- Mika likes tea\n"
                   "- It rained in the forest<|im_end|>\n<|im_start|>assistant\n")
    start = cached(prefix)
    times: dict[str, list[float]] = {"embedding, then line and memories in one pass": [],
                                     "embedding beside the line's pass, then the memories' pass": [],
                                     "  of which: the embedding, beside": [], "  of which: the line's pass": []}
    for trial in range(TRIALS + 2):
        cache = copy.deepcopy(start)
        s = time.perf_counter()
        embedder.encode([query])
        forward(cache, line + memories)
        serial = time.perf_counter() - s
        cache = copy.deepcopy(start)
        took: dict[str, float] = {}

        def embed(took: dict[str, float] = took) -> None:
            t = time.perf_counter()
            embedder.encode([query])
            took["embedding"] = time.perf_counter() - t

        s = time.perf_counter()
        beside = threading.Thread(target=embed)
        beside.start()
        forward(cache, line)
        took["line"] = time.perf_counter() - s
        beside.join()
        forward(cache, memories)
        split = time.perf_counter() - s
        if trial >= 2:  # two warm-ups
            times["embedding, then line and memories in one pass"].append(serial)
            times["embedding beside the line's pass, then the memories' pass"].append(split)
            times["  of which: the embedding, beside"].append(took["embedding"])
            times["  of which: the line's pass"].append(took["line"])
    print(f"the turn's part: line {len(line)} tokens, memories {len(memories)}, after {len(prefix)} cached"
          f" (median of {TRIALS}):")
    for name, xs in times.items():
        print(f"  {name:60} {median_ms(xs):7.1f} ms")


if __name__ == "__main__":
    main()
