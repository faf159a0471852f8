"""Time from a typed message to the first audio chunk, split by stage, and the runtime's own
overhead, measured side by side in one run.

Each trial sends one message through the whole live loop (director, inbox, SQLite log, prompt,
worker-thread generation, sentence cutting, moderation, espeak-ng, speakers and one avatar client
on a real WebSocket) until the first audio chunk is handed to the speakers. In that same run the
engines' own work is timed at their edges:
  render: the prompt's chat template and tokenization (PersonaModel.render);
  model:  from generate() being called in the worker thread to the decoded token that completed
          the first sentence;
  tts:    from asking espeak-ng for the first sentence to its first chunk of audio.
overhead = first audio - (render + model + tts): the time the runtime itself adds.

Then the same work is done again without the runtime ("direct"): the same prompt, the same tokens
(same seed) from plain transformers in a thread until the same first sentence, and espeak-ng run
by hand on it. runtime / direct compares the two whole paths.

    python bench/first_audio.py --like smollm2-135m --trials 15
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import websockets
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_model import tiny  # noqa: E402
from persona_model.generation import Sampling  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from runtime.app import build  # noqa: E402
from runtime.config import load  # noqa: E402
from runtime.events import InputEvent, InputKind, Prompt, PromptContext, Sentence, Stage  # noqa: E402
from runtime.sentences import SentenceCutter  # noqa: E402

FIRST_MIN, MAX_CHARS = 30, 60  # a first sentence of about 15 tokens, as a chat reply has


class TimedModel:
    """The PersonaModel port around the real model, timing render()."""

    def __init__(self, inner: LocalPersonaModel) -> None:
        self.inner = inner
        self.name, self.adapter = inner.name, inner.adapter
        self.render_s = 0.0

    def render(self, context: PromptContext) -> Prompt:
        t = time.perf_counter()
        prompt = self.inner.render(context)
        self.render_s = time.perf_counter() - t
        return prompt

    async def aclose(self) -> None:
        await self.inner.aclose()

    def stream(self, prompt: Prompt):  # noqa: ANN201
        return self.inner.stream(prompt)

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        return await self.inner.json(prompt, schema, max_new_tokens)

    @property
    def traits(self) -> dict[str, float]:
        return self.inner.traits

    def prepare(self, context: PromptContext) -> None:  # the next prompt's start, while she speaks
        self.inner.prepare(context)


class TimedSynth:
    """The Synthesizer port around espeak-ng, timing each sentence's first chunk."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.first_chunk: dict[tuple[str, int], float] = {}

    async def synthesize(self, sentence: Sentence):  # noqa: ANN201
        t = time.monotonic()
        async for chunk in self.inner.synthesize(sentence):
            self.first_chunk.setdefault((sentence.turn_id, sentence.seq), time.monotonic() - t)
            yield chunk


def model_time_to_first_sentence(stats, first_min: int = FIRST_MIN, max_chars: int = MAX_CHARS) -> float:  # noqa: ANN001
    """Seconds from generate() to the decoded piece that completed the first sentence, cut as the
    runtime cuts it (its turn.first_sentence_min_chars and turn.max_sentence_chars). A reply of
    one sentence is cut when the model's stream ends (its end-of-text token is one more forward
    pass after the last words): then that is the model's time."""
    cutter = SentenceCutter("m", first_min, max_chars)
    for when, piece in stats.pieces:
        if cutter.feed(piece):
            return when - stats.started_at
    return (stats.ended_at or stats.pieces[-1][0]) - stats.started_at


def stats_ms(rows: list[dict[str, Any]]) -> tuple[Callable[[str], float], Callable[[str], float]]:
    """median(key) and p90(key) over the trials, in milliseconds."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows) * 1000

    def p90(key: str) -> float:
        v = sorted(r[key] for r in rows)
        return v[min(len(v) - 1, int(0.9 * len(v)))] * 1000

    return med, p90


def model_dir(like: str, root: Path) -> Path:
    d = root / like
    if not (d / "config.json").exists():
        print(f"building random weights of {like} in {d} ...", flush=True)
        tiny.build(d, like=like, train_steps=0)
    return d


def direct_generation(model: LocalPersonaModel, prompt_text: str) -> tuple[float, str]:
    """Plain transformers: seconds to the first complete sentence, and that sentence."""
    tok, s = model.tokenizer, model.sampling
    t0 = time.perf_counter()
    enc = tok(prompt_text, return_tensors="pt", add_special_tokens=False)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()

    class Stop(StoppingCriteria):  # the caller has what it wanted
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: object) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

    torch.manual_seed(s.seed or 0)
    kwargs = dict(**enc, streamer=streamer, max_new_tokens=s.max_new_tokens, do_sample=True,
                  temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                  stopping_criteria=StoppingCriteriaList([Stop()]), pad_token_id=tok.pad_token_id)
    th = threading.Thread(target=lambda: model.model.generate(**kwargs))
    th.start()
    cutter = SentenceCutter("direct", FIRST_MIN, MAX_CHARS)
    first = ""
    for piece in streamer:
        cut = cutter.feed(piece)
        if cut:
            first = cut[0].text
            break
    else:
        first = (cutter.flush() or [None])[0].text  # type: ignore[union-attr]
    elapsed = time.perf_counter() - t0
    stop.set()
    for _ in streamer:
        pass
    th.join()
    return elapsed, first


def direct_tts(text: str, voice: str, speed: int, pitch: int, chunk_bytes: int) -> float:
    """espeak-ng by hand: seconds until the first chunk of audio (after the WAV header) is read."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdin and p.stdout
    p.stdin.write(text.encode() + b"\n")
    p.stdin.close()
    need = 44 + chunk_bytes
    got = 0
    while got < need:
        data = os.read(p.stdout.fileno(), need - got)
        if not data:
            break
        got += len(data)
    elapsed = time.perf_counter() - t0
    p.kill()
    p.wait()
    return elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", default="smollm2-135m", choices=[k for k in tiny.SHAPES if k != "tiny"])
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--models-dir", default="~/.cache/omoide/bench")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()

    path = model_dir(args.like, Path(args.models_dir).expanduser())  # noqa: ASYNC240
    sampling = Sampling(max_new_tokens=80, temperature=0.8, top_p=0.95, repetition_penalty=1.1, seed=1)
    model = LocalPersonaModel.load(path, name=args.like, sampling=sampling)
    work = Path(tempfile.mkdtemp(prefix="omoide-bench-"))
    cfg_file = work / "config.toml"
    cfg_file.write_text(
        f'[memory]\ndatabase = "{work / "bench.db"}"\n[audio]\noutput = "silent"\n[avatar]\nport = 0\n'
        f"[chat.console]\nenabled = false\n[turn]\nhistory_messages = 0\nrecall_k = 0\n"
        f"first_sentence_min_chars = {FIRST_MIN}\nmax_sentence_chars = {MAX_CHARS}\n"
    )
    config = load(cfg_file, env={})
    timed = TimedModel(model)
    app = await build(config, model=timed, console=False)
    director = app.director
    synth = TimedSynth(director.cast.synthesizer)
    director.cast = dataclasses.replace(director.cast, synthesizer=synth)
    runner = asyncio.create_task(director.run(), name="bench-director")
    assert app.avatar is not None
    client = await websockets.connect(f"ws://127.0.0.1:{app.avatar.port}")
    received = 0

    async def read() -> None:
        nonlocal received
        async for _ in client:
            received += 1

    reader = asyncio.create_task(read(), name="bench-avatar-client")
    records: list = []
    director.on_turn = records.append
    rows = []
    chunk = int(config.tts.chunk_ms / 20) * (22050 * 20 // 1000) * 2
    for i in range(args.trials + 1):  # the first trial warms up and is not counted
        text = f"hey, what do you think about question number {i}?"
        event = InputEvent(InputKind.CHAT, text, "bench", director.cast.clock.now(), "viewer")
        director.submit(event)
        while director.current is None or Stage.FIRST_AUDIO not in director.current.record.timings:
            await asyncio.sleep(0.001)
        director.interrupt("bench")
        while len(records) < i + 1:
            await asyncio.sleep(0.001)
        rec = records[-1]
        cutter = SentenceCutter("rt", FIRST_MIN, MAX_CHARS)
        cut = cutter.feed(rec.generated_text) + cutter.flush()
        rt_sentence = cut[0].text if cut else ""
        await asyncio.to_thread(model.join)  # the stopped generation has ended: no shared RNG or CPU
        # direct path, same prompt and seed
        t0 = time.perf_counter()
        prompt = model.render(PromptContext(director.cast.persona, (event,)))
        d_render = time.perf_counter() - t0
        assert prompt.text == rec.prompt, "direct and runtime prompts differ"
        d_gen, d_sentence = await asyncio.to_thread(direct_generation, model, prompt.text)
        d_tts = direct_tts(d_sentence, config.tts.espeak.voice, config.tts.espeak.speed, config.tts.espeak.pitch, chunk)
        if i == 0:
            continue
        t = rec.timings
        e_render, e_model = timed.render_s, model_time_to_first_sentence(model.last_stats)
        first_seq = min(seq for (turn, seq) in synth.first_chunk if turn == rec.turn_id)
        e_tts = synth.first_chunk[(rec.turn_id, first_seq)]
        rows.append({
            "prompt_ready": t[Stage.PROMPT_READY], "first_token": t[Stage.FIRST_TOKEN],
            "first_sentence": t[Stage.FIRST_SENTENCE], "first_audio": t[Stage.FIRST_AUDIO],
            "engine_render": e_render, "engine_model": e_model, "engine_tts": e_tts,
            "overhead": t[Stage.FIRST_AUDIO] - (e_render + e_model + e_tts),
            "direct_render": d_render, "direct_generation": d_gen, "direct_tts": d_tts,
            "same_first_sentence": rt_sentence == d_sentence,
            "prompt_tokens": prompt.tokens,
        })
    reader.cancel()
    await client.close()
    director.stop()
    await runner
    await app.aclose()

    med, p90 = stats_ms(rows)

    print(f"\nmodel: {args.like} (random weights, real shape), {torch.get_num_threads()} torch threads,"
          f" {args.trials} trials, prompt {rows[0]['prompt_tokens']} tokens, avatar clients: 1")
    print(f"{'stage (ms since the message)':34} {'median':>8} {'p90':>8}")
    for key in ("prompt_ready", "first_token", "first_sentence", "first_audio"):
        print(f"  runtime {key:25} {med(key):8.1f} {p90(key):8.1f}")
    print("engines' own work inside the runtime run")
    for key in ("engine_render", "engine_model", "engine_tts"):
        print(f"  {key:33} {med(key):8.1f} {p90(key):8.1f}")
    print(f"  {'runtime overhead':33} {med('overhead'):8.1f} {p90('overhead'):8.1f}")
    print("direct path (no runtime), same prompt, tokens and sentence")
    for key in ("direct_render", "direct_generation", "direct_tts"):
        print(f"  {key:33} {med(key):8.1f} {p90(key):8.1f}")
    direct = statistics.median(r["direct_render"] + r["direct_generation"] + r["direct_tts"] for r in rows) * 1000
    print(f"  {'direct total':33} {direct:8.1f}")
    print(f"runtime overhead: median {med('overhead'):.1f} ms, p90 {p90('overhead'):.1f} ms;"
          f" first audio runtime / direct = {med('first_audio') / direct:.3f}")
    print(f"avatar messages received: {received}; direct path spoke the runtime's first sentence in"
          f" {sum(r['same_first_sentence'] for r in rows)}/{len(rows)} trials")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))  # noqa: ASYNC240


if __name__ == "__main__":
    asyncio.run(main())
