"""End of speech to first audio, by stage, for a spoken question; beside the whole-reply pipeline
(generate the whole reply, synthesize it as one block, then play) in the same run.

Each trial plays an espeak-ng recording of a question through the file-backed microphone at real
time into a fresh character: Silero VAD, a Whisper base-sized model (faster-whisper, int8), a
SmolLM2-135M-sized language model (random weights: the same compute), and espeak-ng or the Piper
path (a tiny Piper voice: piper's real code, a toy graph). Timings start when the person stops
talking. In the same run the engines' own work is timed at their edges: Whisper on the last
stretch of speech, prompt rendering, the model up to the first sentence, the voice up to its first
chunk; overhead = first audio - (silence wait + those). "stt after silence" is the Whisper work
still to do once silence has ended the utterance (the rest of a background transcription, and
the last stretch).

The whole-reply pipeline on the same trial: the same transcript wait, the same prompt and seed,
the whole reply generated (plain transformers), then all of it synthesized before playing.

    python bench/voice_latency.py --engine espeak --trials 8
    python bench/voice_latency.py --engine piper --trials 8
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_audio import (  # noqa: E402
    FIRST_MIN,
    MAX_CHARS,
    TimedModel,
    TimedSynth,
    model_dir,
    model_time_to_first_sentence,
    stats_ms,
)

from persona_model.generation import Sampling  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from plugins.mic_file import FileMicrophone  # noqa: E402
from plugins.stt_whisper import WhisperListener  # noqa: E402
from plugins.tiny.piper import build_voice  # noqa: E402
from plugins.tiny.whisper import build_whisper  # noqa: E402
from runtime.app import build  # noqa: E402
from runtime.config import load  # noqa: E402
from runtime.events import InputKind, PromptContext, Sentence, Stage  # noqa: E402
from runtime.ports import MonotonicClock  # noqa: E402
from runtime.sentences import SentenceCutter  # noqa: E402

QUESTION = "Hey Komorebi, what game are we going to play on stream tonight?"


def whole_reply(model: LocalPersonaModel, prompt_text: str) -> tuple[float, str]:
    """Plain transformers, no streaming: seconds to the whole reply, and the reply."""
    tok, s = model.tokenizer, model.sampling
    t0 = time.perf_counter()
    enc = tok(prompt_text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(s.seed or 0)
    with torch.inference_mode():
        out = model.model.generate(**enc, max_new_tokens=s.max_new_tokens, do_sample=True,
                                   temperature=s.temperature, top_p=s.top_p,
                                   repetition_penalty=s.repetition_penalty, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return time.perf_counter() - t0, text


async def whole_synthesis(synth: Any, text: str) -> float:
    """Seconds to synthesize the whole reply as one block."""
    t0 = time.perf_counter()
    async for _ in synth.synthesize(Sentence("block", 0, " ".join(text.split()))):
        pass
    return time.perf_counter() - t0


async def trial(config: Any, timed: TimedModel, model: LocalPersonaModel, question: Path) -> dict[str, float]:
    clock = MonotonicClock()
    app = await build(config, model=timed, console=False, clock=clock,  # type: ignore[arg-type]
                      microphone=lambda _: FileMicrophone([question], clock, lead_s=0.3, keep_open=True))
    director = app.director
    synth = TimedSynth(director.cast.synthesizer)
    director.cast = dataclasses.replace(director.cast, synthesizer=synth)
    [listener] = [s for s in director.sources if isinstance(s, WhisperListener)]
    stt_times: list[float] = []
    transcribe = listener._transcribe_sync

    def timed_transcribe(audio: Any) -> str:
        t = time.perf_counter()
        try:
            return transcribe(audio)
        finally:
            stt_times.append(time.perf_counter() - t)

    listener._transcribe_sync = timed_transcribe  # type: ignore[method-assign]
    records: list[Any] = []
    director.on_turn = records.append
    runner = asyncio.create_task(director.run(), name="bench-director")
    while director.current is None or Stage.FIRST_AUDIO not in director.current.record.timings:
        await asyncio.sleep(0.001)
    director.interrupt("bench")
    while not records:
        await asyncio.sleep(0.001)
    director.stop()
    await runner
    await app.aclose()
    await asyncio.to_thread(model.join)
    rec = records[0]
    [heard] = rec.inputs
    assert heard.kind is InputKind.TRANSCRIPT
    t = rec.timings
    transcript_ready = heard.meta["transcribed_at"] - heard.received_at
    stt_tail = heard.meta["transcribed_at"] - heard.meta["decided_at"]  # what is left to transcribe
    e_model = model_time_to_first_sentence(model.last_stats)
    first_seq = min(seq for (turn, seq) in synth.first_chunk if turn == rec.turn_id)
    e_tts = synth.first_chunk[(rec.turn_id, first_seq)]
    silence_wait = heard.meta["decided_at"] - heard.received_at  # end_of_speech_s of silence
    # the whole-reply pipeline, same transcript, prompt and seed
    prompt = model.render(PromptContext(director.cast.persona, (heard,)))
    assert prompt.text == rec.prompt
    b_gen, reply = await asyncio.to_thread(whole_reply, model, prompt.text)
    b_tts = await whole_synthesis(synth.inner, reply)
    cutter = SentenceCutter("count", FIRST_MIN, MAX_CHARS)
    sentences = len(cutter.feed(reply) + cutter.flush())
    return {
        "transcript_ready": transcript_ready, "silence_wait": silence_wait, "stt_after_silence": stt_tail,
        "prompt_ready": t[Stage.PROMPT_READY], "first_token": t[Stage.FIRST_TOKEN],
        "first_sentence": t[Stage.FIRST_SENTENCE], "first_audio": t[Stage.FIRST_AUDIO],
        "engine_render": timed.render_s, "engine_model": e_model, "engine_tts": e_tts,
        "overhead": t[Stage.FIRST_AUDIO] - (silence_wait + stt_tail + timed.render_s + e_model + e_tts),
        "whole_generation": b_gen, "whole_tts": b_tts,
        "whole_first_audio": transcript_ready + timed.render_s + b_gen + b_tts,
        "sentences": sentences, "stt_parts": len(stt_times),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["espeak", "piper"], default="espeak")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--models-dir", default="~/.cache/omoide/bench")
    args = ap.parse_args()
    root = Path(args.models_dir).expanduser()  # noqa: ASYNC240
    whisper = root / "whisper-base"
    if not (whisper / "model.bin").exists():
        print(f"building a Whisper base-sized model in {whisper} ...", flush=True)
        build_whisper(whisper, like="base")
    voice = root / "piper-tiny" / "tiny.onnx"
    if args.engine == "piper" and not voice.exists():
        build_voice(voice.parent)
    work = Path(tempfile.mkdtemp(prefix="omoide-voice-bench-"))
    question = work / "question.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(question), QUESTION], check=True)  # noqa: ASYNC221
    llm = LocalPersonaModel.load(model_dir("smollm2-135m", root), name="smollm2-135m",
                                 sampling=Sampling(max_new_tokens=60, temperature=0.8, top_p=0.95,
                                                   repetition_penalty=1.1, seed=1))
    timed = TimedModel(llm)
    (work / "config.toml").write_text(
        f'[memory]\ndatabase = "{work / "bench.db"}"\n[audio]\noutput = "silent"\n[avatar]\nport = 0\n'
        f"[chat.console]\nenabled = false\n[turn]\nhistory_messages = 0\nrecall_k = 0\n"
        f"first_sentence_min_chars = {FIRST_MIN}\nmax_sentence_chars = {MAX_CHARS}\n"
        f'[stt]\nenabled = true\nmodel = "{whisper}"\nstrict_filters = false\ndevice = "cpu"\n'
        f'[tts]\nengine = "{args.engine}"\n[tts.piper]\nvoice = "{voice}"\n'
    )
    config = load(work / "config.toml", env={})
    rows = []
    for i in range(args.trials + 1):  # the first trial warms up and is not counted
        row = await trial(config, timed, llm, question)
        if i:
            rows.append(row)

    med, p90 = stats_ms(rows)

    print(f"\nvoice: {args.engine}; LLM smollm2-135m shape; Whisper base shape (int8); {args.trials} trials;"
          f" replies of {min(r['sentences'] for r in rows)}-{max(r['sentences'] for r in rows)} sentences;"
          f" up to {max(r['stt_parts'] for r in rows)} Whisper passes an utterance")
    print(f"{'stage (ms since the end of speech)':38} {'median':>8} {'p90':>8}")
    for key in ("transcript_ready", "prompt_ready", "first_token", "first_sentence", "first_audio"):
        print(f"  streamed {key:27} {med(key):8.1f} {p90(key):8.1f}")
    print("engines' own work inside the streamed run")
    for key in ("silence_wait", "stt_after_silence", "engine_render", "engine_model", "engine_tts"):
        print(f"  {key:36} {med(key):8.1f} {p90(key):8.1f}")
    print(f"  {'runtime overhead':36} {med('overhead'):8.1f} {p90('overhead'):8.1f}")
    print("whole-reply pipeline (generate all, synthesize all, then play), same run")
    for key in ("whole_generation", "whole_tts", "whole_first_audio"):
        print(f"  {key:36} {med(key):8.1f} {p90(key):8.1f}")
    print(f"first audio: whole-reply / streamed = {med('whole_first_audio') / med('first_audio'):.2f}x;"
          f" runtime overhead median {med('overhead'):.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
