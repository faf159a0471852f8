"""What each language model size costs on this machine, through the local backend: memory, the
prompt's prefill, and decoding speed, in torch float32 on the CPU (the local backend's default).

Random weights of each real model's published shape (persona_model/tiny.py SHAPES, and
SmolLM2-1.7B's here): the same compute as the trained model, without downloading it. The bundled
SmolLM2-135M-Instruct is measured with its real weights beside its random twin, as a check that
the shape stands for the model.

    python bench/model_sizes.py [--prompt-tokens 600] [--tokens 48] [--skip 1.7b]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_model import tiny  # noqa: E402
from runtime.models import bundled_llm  # noqa: E402

SMOLLM2_1_7B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True, rope_theta=130000.0,
                    rms_norm_eps=1e-5, max_position_embeddings=8192)


def measure(model: torch.nn.Module, prompt_tokens: int, tokens: int, vocab: int) -> tuple[float, float]:
    """(prefill seconds for the prompt, decoding tokens/s), greedy, the end token held off."""
    ids = torch.randint(100, min(vocab, 40000), (1, prompt_tokens))
    with torch.inference_mode():
        model.generate(ids[:, :32], max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm up
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        total = time.perf_counter() - t
    return prefill, (tokens - 1) / max(total - prefill, 1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=600)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--skip", action="append", default=[], help="leave out a size (135m, 360m, 0.5b, 1.7b)")
    args = ap.parse_args()
    sizes: list[tuple[str, object]] = [
        ("bundled SmolLM2-135M-Instruct (real weights)", "bundled"),
        ("SmolLM2-135M shape", tiny.SHAPES["smollm2-135m"]),
        ("SmolLM2-360M shape", tiny.SHAPES["smollm2-360m"]),
        ("Qwen2.5-0.5B shape", tiny.SHAPES["qwen2.5-0.5b"]),
        ("SmolLM2-1.7B shape", SMOLLM2_1_7B),
    ]
    print(f"torch {torch.__version__}, float32, {torch.get_num_threads()} threads; prompt {args.prompt_tokens}"
          f" tokens, {args.tokens} new tokens, greedy")
    print(f"{'model':48} {'params':>8} {'weights':>9} {'prefill':>9} {'decode':>12}")
    for name, shape in sizes:
        if any(s.lower() in name.lower() for s in args.skip):
            continue
        if shape == "bundled":
            model = AutoModelForCausalLM.from_pretrained(bundled_llm(Path("~/.cache/omoide/models").expanduser()),
                                                         dtype=torch.float32)
        else:
            config = dict(shape)  # type: ignore[call-overload]
            config["vocab_size"] = config.get("vocab_size") or 49152
            model = LlamaForCausalLM(LlamaConfig(**config))
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        prefill, speed = measure(model, args.prompt_tokens, args.tokens, int(model.config.vocab_size))
        print(f"{name:48} {params / 1e6:7.0f}M {params * 4 / 2**30:7.2f}GB {prefill:8.2f}s {speed:7.1f} tok/s",
              flush=True)
        del model
        gc.collect()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")


if __name__ == "__main__":
    main()
