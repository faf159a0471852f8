"""First audio on the real stack with the default configuration, by stage, beside the whole-reply
pipeline in the same run.

The character is built from config.toml as a user runs it: the bundled SmolLM2-135M-Instruct,
the bundled Piper voice (espeak-ng behind it), the bundled Whisper tiny.en for the spoken trials,
memory recall by meaning (MiniLM), history and reflection on, the prefix cache on. Only what must
differ on a bench machine is changed: a fresh database, silent speakers (they keep real-time pace),
the avatar channel on a free port, no log file. Before the trials, the twenty viewer lines of
tests/data/viewer_lines.txt are chatted through it, so the history and memories are those of a
stream in progress, as a user's would be.

typed:  a typed line, from the moment it arrives to the first audio handed to the speakers.
spoken: a question said into the (file-backed) microphone, from the moment the person stops
        talking to the first audio.

In the same turn, the engines' own work is timed at their edges: recall (embedding the message
and ranking memories), the prompt's rendering, the model from generate() to the token that
completes the first sentence, the voice up to its first chunk, and for speech the silence waited
out and the Whisper work left once it ended. overhead = first audio - all of those: what the
runtime itself adds.

The whole-reply pipeline, same trial: the same prompt generated to the same number of tokens
(plain transformers, no streaming), the whole spoken reply synthesized by the same voice as one
block, then played: its first audio comes after all of it.

    python bench/real_latency.py [--trials 10] [--config config.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_audio import TimedModel, TimedSynth, model_time_to_first_sentence, stats_ms  # noqa: E402
from replies import NAMES, bench_config, conversation, viewer_lines  # noqa: E402

from persona_model.generation import GenerationStats  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from plugins.mic_file import FileMicrophone  # noqa: E402
from runtime.app import App, build  # noqa: E402
from runtime.config import Config  # noqa: E402
from runtime.events import TYPED, InputEvent, InputKind, Priority, Sentence, Stage, TurnRecord  # noqa: E402
from runtime.models import model_from  # noqa: E402
from runtime.ports import MonotonicClock  # noqa: E402
from tests.test_real_stack import piper_wavs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TYPED_LINES = ["what game should we play next?", "do you remember what I told you about my cat?",
               "tell me something about your forest", "are you having fun today?", "what is your favourite song?",
               "I am going to make some tea, want some?", "which game was the hardest for you?",
               "what do you do when nobody is watching?", "can you tell me a joke?", "what are you thinking about?",
               "how was your week?", "say hi to everyone who just joined"]
SPOKEN_LINES = ["Hey Komorebi what game are we going to play tonight?", "Do you like rainy days in the forest?",
                "What should I name my new cat?", "Can you sing a little song for us?", "Are you tired after the stream?",
                "What is the best snack for a long stream?", "Tell me about your favourite plant.",
                "Did you see that funny clip in chat?", "What would you do with a million turnips?",
                "Should we try the hard mode next?", "Do you want to read some chat messages?",
                "What was your favourite moment today?"]


class TimedRecall:
    """Wraps the store's recall: how long embedding the message and ranking took, per turn."""

    def __init__(self, memory: Any) -> None:
        self.inner = memory.recall
        self.seconds: list[float] = []
        memory.recall = self

    async def __call__(self, text: str, k: int, viewer: str | None = None) -> Any:
        t = time.perf_counter()
        try:
            return await self.inner(text, k, viewer)
        finally:
            self.seconds.append(time.perf_counter() - t)


def whole_reply(model: LocalPersonaModel, prompt_text: str, tokens: int) -> float:
    """Plain transformers, no streaming: seconds to generate `tokens` tokens after the prompt."""
    tok, s = model.tokenizer, model.sampling
    enc = tok(prompt_text, return_tensors="pt", add_special_tokens=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True,
                             temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                             pad_token_id=tok.pad_token_id)
    return time.perf_counter() - t0


async def whole_synthesis(synth: Any, text: str) -> float:
    t0 = time.perf_counter()
    async for _ in synth.synthesize(Sentence("block", 0, text)):
        pass
    return time.perf_counter() - t0


async def measure(model: LocalPersonaModel, timed: TimedModel, synth: TimedSynth, recall: TimedRecall,
                  rec: TurnRecord, stats: GenerationStats, extra: dict[str, float],
                  cuts: tuple[int, int]) -> dict[str, float]:
    """One trial's stages (seconds since the input arrived: the line, or the end of speech) and
    the whole-reply pipeline for the same prompt."""
    t = rec.timings
    # cut where the runtime cut it: the configured lengths (the stripped bench's 60 characters
    # would end the first sentence earlier than the runtime did, and the difference would pass
    # for overhead)
    e_model = model_time_to_first_sentence(stats, *cuts)
    first_seq = min(seq for (turn, seq) in synth.first_chunk if turn == rec.turn_id)
    e_tts = synth.first_chunk[(rec.turn_id, first_seq)]
    e_recall = recall.seconds[-1]
    engines = e_recall + timed.render_s + e_model + e_tts + sum(extra.values())
    await asyncio.to_thread(model.join)
    b_gen = await asyncio.to_thread(whole_reply, model, rec.prompt, max(stats.new_tokens, 1))
    b_tts = await whole_synthesis(synth.inner, rec.spoken_text)
    ready = t[Stage.PROMPT_READY]  # recall and render: the same for both pipelines
    # the overhead, in four parts that add up to it: before the model is asked (the input's
    # commit, the turn's record, thread hops), waiting for the model (a reflection's chunk, a
    # prompt being prepared), from the model's first sentence to the runtime's (the cutter,
    # moderation), and from there to the first audio besides the voice's own work (queues, sinks)
    arrived = min(e.received_at for e in rec.inputs)  # what the stages count from
    asked, started = stats.asked_at - arrived, stats.started_at - arrived
    parts = {"overhead_before_model": asked - e_recall - timed.render_s - sum(extra.values()),
             "overhead_waiting_for_model": started - asked,
             "overhead_to_sentence": t[Stage.FIRST_SENTENCE] - (started + e_model),
             "overhead_after_sentence": t[Stage.FIRST_AUDIO] - t[Stage.FIRST_SENTENCE] - e_tts}
    return {**parts,
        **extra, "prompt_ready": ready, "first_token": t[Stage.FIRST_TOKEN],
        "first_sentence": t[Stage.FIRST_SENTENCE], "first_audio": t[Stage.FIRST_AUDIO],
        "engine_recall": e_recall, "engine_render": timed.render_s, "engine_model": e_model, "engine_tts": e_tts,
        "overhead": t[Stage.FIRST_AUDIO] - engines,
        "overhead_with_recall": t[Stage.FIRST_AUDIO] - (engines - e_recall),
        "whole_generation": b_gen, "whole_tts": b_tts, "whole_first_audio": ready + b_gen + b_tts,
        "prompt_tokens": stats.prompt_tokens, "cached_tokens": stats.cached_tokens, "new_tokens": stats.new_tokens,
    }


def cuts(config: Config) -> tuple[int, int]:
    return config.turn.first_sentence_min_chars, config.turn.max_sentence_chars


def instrument(app: App, model: LocalPersonaModel) -> tuple[TimedModel, TimedSynth, TimedRecall, list[Any]]:
    """The engines timed at their edges; each finished turn's record with its generation's stats,
    taken as the turn ends (before reflection, between turns, can use the model)."""
    director = app.director
    timed = TimedModel(model)
    synth = TimedSynth(director.cast.synthesizer)
    director.cast = dataclasses.replace(director.cast, model=timed, synthesizer=synth)  # type: ignore[arg-type]
    done: list[tuple[TurnRecord, GenerationStats]] = []
    director.on_turn = lambda record: done.append((record, model.last_stats))
    return timed, synth, TimedRecall(app.memory), done


async def typed_trials(config: Config, model: LocalPersonaModel, trials: int) -> list[dict[str, float]]:
    app = await build(config, model=model, console=False, clock=MonotonicClock())
    timed, synth, recall, records = instrument(app, model)
    runner = asyncio.create_task(app.director.run(), name="bench-director")
    rows = []
    for i in range(trials + 1):  # the first warms up and is not counted
        n = len(records)
        app.director.submit(InputEvent(InputKind.CHAT, TYPED_LINES[i % len(TYPED_LINES)], "console",
                                       app.director.cast.clock.now(), "you", Priority.NORMAL, meta={"event": TYPED}))
        while len(records) == n:
            await asyncio.sleep(0.005)
        if i:
            rows.append(await measure(model, timed, synth, recall, *records[-1], {}, cuts(config)))
    app.director.stop()
    await runner
    await app.aclose()
    return rows


async def spoken_trials(config: Config, model: LocalPersonaModel, trials: int, work: Path) -> list[dict[str, float]]:
    wavs = await piper_wavs(work, [SPOKEN_LINES[i % len(SPOKEN_LINES)] for i in range(trials + 1)])
    clock = MonotonicClock()
    # long gaps: each reply is over before the next question
    mic = lambda _: FileMicrophone(wavs, clock, lead_s=0.5, gap_s=40.0, keep_open=True)  # noqa: E731
    listening = config.model_copy(update={"stt": config.stt.model_copy(update={"enabled": True})})
    app = await build(listening, model=model, console=False, clock=clock, microphone=mic)
    timed, synth, recall, records = instrument(app, model)
    runner = asyncio.create_task(app.director.run(), name="bench-director")
    rows = []
    while len(records) < trials + 1:
        n = len(records)
        while len(records) == n:
            await asyncio.sleep(0.005)
        rec, stats = records[-1]
        [heard] = rec.inputs
        if heard.kind is not InputKind.TRANSCRIPT or n == 0:
            continue
        silence = heard.meta["decided_at"] - heard.received_at  # end_of_speech_s of silence
        stt_tail = heard.meta["transcribed_at"] - heard.meta["decided_at"]
        rows.append(await measure(model, timed, synth, recall, rec, stats,
                                  {"silence_wait": silence, "stt_after_silence": stt_tail}, cuts(config)))
        rows[-1]["transcript_ready"] = silence + stt_tail
    app.director.stop()
    await runner
    await app.aclose()
    return rows


def report(title: str, rows: list[dict[str, float]], stages: tuple[str, ...], engines: tuple[str, ...]) -> None:
    med, p90 = stats_ms(rows)
    cached = sum(r["cached_tokens"] for r in rows) / max(sum(r["prompt_tokens"] for r in rows), 1)
    print(f"\n{title}: {len(rows)} trials; prompts of {min(r['prompt_tokens'] for r in rows):.0f}-"
          f"{max(r['prompt_tokens'] for r in rows):.0f} tokens ({cached:.0%} from the prefix cache);"
          f" replies of {min(r['new_tokens'] for r in rows):.0f}-{max(r['new_tokens'] for r in rows):.0f} tokens")
    for i, r in enumerate(rows, 1):  # what a slow trial had that the others did not
        print(f"  trial {i:2}: prompt {r['prompt_tokens']:.0f} tokens, {r['cached_tokens']:.0f} cached;"
              f" first token {r['first_token'] * 1000:.0f} ms, first audio {r['first_audio'] * 1000:.0f} ms,"
              f" overhead {r['overhead'] * 1000:.1f} ms (waiting for the model"
              f" {r['overhead_waiting_for_model'] * 1000:.1f})")
    print(f"  {'stage (ms)':40} {'median':>8} {'p90':>8}")
    for key in stages:
        print(f"  streamed {key:31} {med(key):8.1f} {p90(key):8.1f}")
    print("  engines' own work inside the streamed turn")
    for key in engines:
        print(f"    {key:38} {med(key):8.1f} {p90(key):8.1f}")
    print(f"    {'runtime overhead':38} {med('overhead'):8.1f} {p90('overhead'):8.1f}")
    for key in ("overhead_before_model", "overhead_waiting_for_model", "overhead_to_sentence",
                "overhead_after_sentence"):
        print(f"      {key.removeprefix('overhead_').replace('_', ' '):36} {med(key):8.1f} {p90(key):8.1f}")
    print(f"    {'runtime overhead, recall counted in it':38} {med('overhead_with_recall'):8.1f}"
          f" {p90('overhead_with_recall'):8.1f}")
    print("  whole-reply pipeline (generate all, synthesize all, then play), same prompts")
    for key in ("whole_generation", "whole_tts", "whole_first_audio"):
        print(f"    {key:38} {med(key):8.1f} {p90(key):8.1f}")
    ratio = statistics.median(r["whole_first_audio"] / r["first_audio"] for r in rows)
    print(f"  first audio: whole-reply / streamed = {ratio:.2f}x (median of per-trial ratios);"
          f" overhead median {med('overhead'):.1f} ms ({med('overhead_with_recall'):.1f} ms counting recall)")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.toml"))
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--skip-spoken", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="omoide-real-bench-"))
    config = bench_config(args.config, work, avatar={"enabled": True, "port": 0})
    t = time.perf_counter()
    model = await asyncio.to_thread(model_from, config)
    print(f"model {model.name} loaded in {time.perf_counter() - t:.1f} s; {torch.get_num_threads()} torch threads")
    lines = viewer_lines(ROOT / "tests" / "data" / "viewer_lines.txt")
    t = time.perf_counter()
    await conversation(config, lines, model)  # a stream in progress: history and memories
    print(f"warm-up: {len(lines)} viewer lines from {len(set(NAMES))} viewers in {time.perf_counter() - t:.0f} s")
    typed = await typed_trials(config, model, args.trials)
    report("typed message -> first audio", typed, ("prompt_ready", "first_token", "first_sentence", "first_audio"),
           ("engine_recall", "engine_render", "engine_model", "engine_tts"))
    if not args.skip_spoken:
        spoken = await spoken_trials(config, model, args.trials, work)
        report("end of speech -> first audio", spoken,
               ("transcript_ready", "prompt_ready", "first_token", "first_sentence", "first_audio"),
               ("silence_wait", "stt_after_silence", "engine_recall", "engine_render", "engine_model", "engine_tts"))


if __name__ == "__main__":
    asyncio.run(main())
