"""Our local backend against llama.cpp's server on the same model, in one run: time to first token
and decode speed, on random weights of a real architecture (the same compute as the trained model).

The model is built once, saved for transformers and written as GGUF (same weights, float32 in
both), and served by `python -m llama_cpp.server` with as many threads as torch uses. Both
backends get the same rendered persona prompt of about 1,500 tokens, a new viewer line each turn,
greedy decoding, no repetition penalty, and exactly --tokens new tokens (the end token is held
off), all through the runtime's own PersonaModel classes (LocalPersonaModel, ServerPersonaModel):
what a turn sees. Both reuse the persona's unchanged start: our prefix cache, llama.cpp's prompt
cache. The first turn fills those caches and is reported on its own.

With --bundled, the bundled SmolLM2-135M-Instruct: its GGUF file as shipped (4-bit Q4_1) in
llama.cpp, against the same file dequantized to float32 in torch, as each backend runs it by
default.

    python bench/llamacpp_vs_local.py                      # smollm2-135m
    python bench/llamacpp_vs_local.py --bundled
    python bench/llamacpp_vs_local.py --like tiny --tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

from bench.prefix_cache import persona  # noqa: E402
from persona_model import tiny  # noqa: E402
from persona_model.generation import Sampling  # noqa: E402
from persona_model.gguf_export import write_gguf  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from persona_model.server import ServerPersonaModel, ServerSettings  # noqa: E402
from runtime import bundled  # noqa: E402
from runtime.events import InputEvent, InputKind, Persona, PromptContext  # noqa: E402
from runtime.models import bundled_llm  # noqa: E402


def start_server(gguf: Path, threads: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "4096", "--n_threads", str(threads), "--n_threads_batch", str(threads)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    while True:
        try:
            httpx.get(f"{url}/models", timeout=1).raise_for_status()
            return process, url
        except httpx.HTTPError:
            if process.poll() is not None:
                raise SystemExit(f"llama.cpp's server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)


async def turns(model: LocalPersonaModel | ServerPersonaModel, card: Persona, n: int,
                tokens: int) -> tuple[float, list[float], list[float]]:
    """(first turn's first token, later turns' first tokens, later turns' decode tokens/s)."""
    first: list[float] = []
    speed: list[float] = []
    for i in range(n + 1):
        event = InputEvent(InputKind.CHAT, f"viewer {i} says: what are you playing today, Komorebi?", "bench", 0.0,
                           f"viewer{i}")
        prompt = model.render(PromptContext(card, (event,)))
        t0 = time.perf_counter()
        stamps = []
        async for _ in model.stream(prompt):
            stamps.append(time.perf_counter())
        if isinstance(model, LocalPersonaModel):
            model.join()
        first.append(stamps[0] - t0)
        speed.append((tokens - 1) / (stamps[-1] - stamps[0]))
    return first[0], first[1:], speed[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", default="smollm2-135m", choices=sorted(tiny.SHAPES))
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per reply")
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    ap.add_argument("--bundled", action="store_true", help="the bundled model: its Q4_1 GGUF against torch float32")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    greedy = Sampling(max_new_tokens=args.tokens, temperature=0.0, repetition_penalty=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundled:
            args.like = "bundled SmolLM2-135M-Instruct (llama.cpp: Q4_1 as shipped; torch: float32)"
            base = bundled_llm(Path("~/.cache/omoide/models").expanduser())
            gguf = bundled.locate("llm")
        else:
            base = tiny.build(Path(tmp) / args.like, like=args.like, train_steps=0)
            gguf = write_gguf(base, Path(tmp) / f"{args.like}.gguf")
        local = LocalPersonaModel.load(base, sampling=greedy, prefix_cache=True, max_prompt_tokens=4096)
        local.model.generation_config.min_new_tokens = args.tokens  # the end token is held off
        eos = int(local.tokenizer.eos_token_id)
        card = persona(args.prompt_tokens - 250, local.tokenizer)
        print(f"{args.like}, greedy, {args.tokens} new tokens a turn, {args.turns} turns after the first;"
              f" CPU, {threads} threads for both")
        l_cold, l_first, l_speed = asyncio.run(turns(local, card, args.turns, args.tokens))
        prompt_tokens, tokenizer = local.last_stats.prompt_tokens, local.tokenizer
        del local
        process, url = start_server(gguf, threads, Path(tmp) / "server.log")
        try:
            server = ServerPersonaModel(ServerSettings(
                url, sampling=greedy, max_prompt_tokens=4096, first_token_timeout_s=120,
                extra={"repeat_penalty": 1.0, "logit_bias": {str(eos): -100}}),  # llama.cpp's knobs
                tokenizer=tokenizer)  # the same prompts, token for token
            s_cold, s_first, s_speed = asyncio.run(turns(server, card, args.turns, args.tokens))
        finally:
            process.terminate()
            process.wait(10)
    rows = [("first turn: first token (ms)", l_cold * 1e3, s_cold * 1e3),
            ("later turns: first token p50 (ms)", statistics.median(l_first) * 1e3, statistics.median(s_first) * 1e3),
            ("decode p50 (tokens/s)", statistics.median(l_speed), statistics.median(s_speed))]
    print(f"prompt: {prompt_tokens} tokens")
    print(f"{'':<36}{'local':>10}{'llama.cpp':>11}{'llama.cpp / local':>19}")
    for name, a, b in rows:
        ratio = b / a if "tokens/s" in name else a / b
        print(f"{name:<36}{a:>10.1f}{b:>11.1f}{ratio:>17.2f}x {'faster' if ratio >= 1 else 'slower'}")


if __name__ == "__main__":
    main()
