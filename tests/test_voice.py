"""Voice end to end with real components: espeak-ng makes the speech, a file-backed microphone
plays it as if live, Silero VAD and a tiny Whisper (faster-whisper, built on the spot) listen, the
character answers, and what the speakers play can be fed back into the microphone."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from plugins.audio import PlaybackLog, SynthesizerError
from plugins.listening import ListenerSettings
from plugins.mic_file import FileMicrophone
from plugins.stt_whisper import WhisperListener, load_whisper, normalize_phrase
from plugins.tiny.piper import build_voice
from plugins.tiny.whisper import SAYS, build_whisper
from plugins.tts_coqui import CoquiSynthesizer
from plugins.tts_espeak import EspeakSynthesizer
from plugins.tts_piper import PiperSynthesizer
from runtime.app import App, build
from runtime.config import load
from runtime.events import Control, InputEvent, InputKind, Priority, Sentence, TurnRecord, TurnStatus
from runtime.voices import FallbackSynthesizer
from tests.conftest import FastClock, write_config
from tests.fakes import ScriptedModel
from tests.test_live_loop import LONG, say, until


def espeak_wav(path: Path, text: str) -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="session")
def voice_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("voice")
    return {
        "whisper": build_whisper(d / "whisper"),
        "piper": build_voice(d / "piper"),
        "question": espeak_wav(d / "question.wav", "Hello there, what is your favourite game to play?"),
        "barge": espeak_wav(d / "barge.wav", "Wait, wait, stop talking for a second please."),
        "blip": espeak_wav(d / "blip.wav", "Oh."),
    }


@contextlib.asynccontextmanager
async def voiced(tmp_path: Path, model: Any, whisper_dir: Path, clock: FastClock,
                 microphone: Callable[[PlaybackLog | None], FileMicrophone], *, until_sources_end: bool = False,
                 **stt: Any) -> AsyncIterator[tuple[App, list[TurnRecord], WhisperListener, asyncio.Task[None]]]:
    """A character listening through `microphone(playback_log)`, configured by [stt] keys."""
    config = load(write_config(tmp_path, stt={"enabled": True, "model": str(whisper_dir),
                                              "strict_filters": False, **stt}), env={})
    app = await build(config, model=model, console=False, clock=clock, microphone=microphone,
                      exit_when_sources_end=until_sources_end)
    [listener] = [s for s in app.director.sources if isinstance(s, WhisperListener)]
    records: list[TurnRecord] = []
    app.director.on_turn = records.append
    task = asyncio.create_task(app.director.run(), name="test-director")
    try:
        yield app, records, listener, task
    finally:
        app.director.stop()
        await asyncio.wait_for(task, 30)
        await app.aclose()


@pytest.mark.model
async def test_a_spoken_question_produces_a_turn(tmp_path, voice_dir, tiny_model):
    clock = FastClock(4)
    mic = lambda _: FileMicrophone([voice_dir["question"]], clock, keep_open=True)  # noqa: E731
    async with voiced(tmp_path, tiny_model, voice_dir["whisper"], clock, mic) as (app, records, _, _t):
        await until(lambda: records, timeout=60)
    [record] = records
    [heard] = record.inputs
    assert (heard.kind, heard.source, heard.author) == (InputKind.TRANSCRIPT, "mic", "you")
    # what the tiny Whisper was taught to hear, once per part transcribed (during speech and after)
    assert heard.text in (SAYS, f"{SAYS} {SAYS}")
    assert record.status is TurnStatus.COMPLETE and record.spoken_text
    # the turn is timed from the moment the person stopped talking
    assert heard.received_at < heard.meta["transcribed_at"]
    assert 1.5 < heard.meta["duration_s"] < 4


async def test_speech_during_a_reply_cancels_it_and_the_record_keeps_the_heard_part(tmp_path, voice_dir):
    clock = FastClock(1)  # real time: the barge-in latency is measured
    mic = lambda _: FileMicrophone([voice_dir["question"], voice_dir["barge"]], clock, gap_s=3.0,  # noqa: E731
                                   keep_open=True)
    async with voiced(tmp_path, ScriptedModel(LONG), voice_dir["whisper"], clock, mic) as (app, records, _, _t):
        await until(lambda: len(records) == 2, timeout=60)
        history = list(app.director.history)
    first, second = records
    assert first.status is TurnStatus.INTERRUPTED and first.interrupt_reason == "barge-in"
    assert first.interrupted_at is not None and first.interrupted_at >= 1
    assert first.spoken_text.startswith("Hello there, friend.")
    assert "goodbye" not in first.spoken_text and LONG.replace("[happy] ", "").startswith(first.spoken_text)
    latency = first.timings["barge_in"] - first.timings["speech_onset"]
    assert 0 <= latency <= 0.15, f"reply held {latency * 1000:.0f} ms after speech began"
    assert second.inputs[0].kind is InputKind.TRANSCRIPT  # what they said is answered next
    assert history[1].content == first.spoken_text  # the history has the heard part only


FEEDBACK = "Hello chat. I am talking to myself now, on and on, to see if I hear myself. Done."


async def test_the_characters_own_voice_fed_back_triggers_nothing(tmp_path, voice_dir):
    clock = FastClock(4)
    mics: list[FileMicrophone] = []

    def mic(playback: PlaybackLog | None) -> FileMicrophone:
        mics.append(FileMicrophone([], clock, keep_open=True, echo=playback, echo_gain=0.8, echo_delay_s=0.06))
        return mics[-1]

    async with voiced(tmp_path, ScriptedModel(FEEDBACK), voice_dir["whisper"], clock, mic) as (app, records, listener, _t):
        say(app, "say something")
        await until(lambda: records, timeout=60)
        await asyncio.sleep(0.3)
    assert listener.echo_frames > 20, "the playback never reached the microphone"
    assert [r.status for r in records] == [TurnStatus.COMPLETE]
    assert records[0].false_interruptions == 0 and "barge_in" not in records[0].timings
    assert [r.inputs[0].kind for r in records] == [InputKind.CHAT]  # no transcript of itself


async def test_without_the_echo_gate_the_own_voice_would_interrupt(tmp_path, voice_dir):
    """The check above can fail: the same feedback with the gate off holds the reply."""
    clock = FastClock(4)
    mic = lambda playback: FileMicrophone([], clock, keep_open=True, echo=playback, echo_gain=0.8,  # noqa: E731
                                          echo_delay_s=0.06)
    async with voiced(tmp_path, ScriptedModel(FEEDBACK), voice_dir["whisper"], clock, mic,
                      echo_gate=False) as (app, records, listener, _t):
        say(app, "say something")
        await until(lambda: records, timeout=60)
    assert "barge_in" in records[0].timings


async def test_silence_and_noise_make_no_turn(tmp_path, voice_dir):
    clock = FastClock(8)
    mic = lambda _: FileMicrophone([], clock, tail_s=4.0, noise=0.003)  # noqa: E731
    async with voiced(tmp_path, ScriptedModel("Hi."), voice_dir["whisper"], clock, mic,
                      until_sources_end=True) as (app, records, listener, task):
        await asyncio.wait_for(task, 30)
    assert records == []


async def test_a_muted_microphone_hears_nothing(tmp_path, voice_dir):
    clock = FastClock(4)
    mic = lambda _: FileMicrophone([voice_dir["question"]], clock, tail_s=1.5)  # noqa: E731
    async with voiced(tmp_path, ScriptedModel("Hi."), voice_dir["whisper"], clock, mic,
                      until_sources_end=True) as (app, records, listener, task):
        app.director.submit(InputEvent(InputKind.CONTROL, Control.MUTE, "console", 0.0, priority=Priority.CRITICAL))
        await asyncio.wait_for(task, 30)
        assert listener.muted
    assert records == []


async def test_push_to_talk_listens_only_while_held(tmp_path, voice_dir):
    clock = FastClock(4)
    mics: list[FileMicrophone] = []

    def mic(_: PlaybackLog | None) -> FileMicrophone:
        mics.append(FileMicrophone([voice_dir["question"], voice_dir["question"]], clock, gap_s=1.0, keep_open=True))
        return mics[-1]

    def control(command: Control) -> None:
        app.director.submit(InputEvent(InputKind.CONTROL, command, "console", 0.0, priority=Priority.CRITICAL))

    async with voiced(tmp_path, ScriptedModel("Hi."), voice_dir["whisper"], clock, mic,
                      push_to_talk=True) as (app, records, listener, _t):
        await until(lambda: len(mics[0].speech_starts) == 2, timeout=30)  # the first question went unheard
        assert records == []
        control(Control.TALK_START)
        await until(lambda: clock.now() > mics[0].speech_starts[1] + 3.2, timeout=30)
        control(Control.TALK_STOP)
        await until(lambda: records, timeout=30)
    assert records[0].inputs[0].kind is InputKind.TRANSCRIPT


async def test_a_short_noise_during_a_reply_is_a_false_interruption_and_the_reply_goes_on(tmp_path, voice_dir):
    clock = FastClock(2)
    mic = lambda _: FileMicrophone([voice_dir["question"], voice_dir["blip"]], clock, gap_s=3.0,  # noqa: E731
                                   keep_open=True)
    text = "Hello there. This reply keeps going for a while. It has several sentences. The end."
    async with voiced(tmp_path, ScriptedModel(text), voice_dir["whisper"], clock, mic,
                      min_utterance_s=0.6) as (app, records, _, _t):
        await until(lambda: records, timeout=60)
    [record] = records
    assert record.status is TurnStatus.COMPLETE
    assert record.false_interruptions == 1
    assert record.spoken_text == text


def test_known_hallucinations_are_dropped(voice_dir):
    whisper = load_whisper(str(voice_dir["whisper"]), voice_dir["whisper"].parent, "cpu", "int8", 1, False)
    listener = WhisperListener(FileMicrophone([], FastClock()), whisper, FastClock(),
                               ListenerSettings(drop_phrases=("Like and follow!",)))
    assert not listener._keep("Thank you for watching!")
    assert not listener._keep("  ...  ")
    assert not listener._keep("like and FOLLOW")
    assert listener._keep("thank you for watching me play, that was fun")
    assert normalize_phrase("Thanks  for watching!!") == "thanks for watching"
class _Failing:
    def __init__(self) -> None:
        self.calls = 0

    async def synthesize(self, sentence: Sentence) -> AsyncIterator[Any]:
        self.calls += 1
        if "fail" in sentence.text:
            raise RuntimeError("engine crashed")
        async for chunk in EspeakSynthesizer(pitch=99).synthesize(sentence):
            yield chunk


async def test_a_failing_voice_falls_back_to_espeak_for_that_sentence_only(caplog):
    primary = _Failing()
    voice = FallbackSynthesizer(primary, EspeakSynthesizer(), "flaky")
    for seq, text in enumerate(["This one is fine.", "This one will fail.", "Fine again."]):
        chunks = [c async for c in voice.synthesize(Sentence("t", seq, text))]
        assert chunks and sum(c.samples for c in chunks) > 10000, f"silence for {text!r}"
    assert primary.calls == 3 and voice.failures == 1
    assert "voice failed on a sentence" in caplog.text


async def test_piper_voice_speaks_through_the_real_loading_path(voice_dir):
    voice = PiperSynthesizer(voice_dir["piper"], chunk_ms=100)
    chunks = [c async for c in voice.synthesize(Sentence("t", 0, "Hello there, chat. How are you?"))]
    assert chunks and {c.rate for c in chunks} == {22050}
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert sum(c.samples for c in chunks) > 256 * 10  # 256 samples a phoneme


@pytest.mark.real
async def test_a_long_sentence_leaves_no_memory_held_by_the_voice():
    """onnxruntime's memory arena kept the largest sentence's buffers, growing in doublings: a
    streamer's process grew by a gigabyte over a night. Each sentence's buffers are freed now."""
    from runtime import bundled
    from runtime.heap import heap_bytes

    voice = PiperSynthesizer(bundled.locate("voice"), chunk_ms=100)
    long = ("I was thinking about the forest today, and about the little stream behind the old"
            " cedar tree where the frogs sing every evening, and how quiet it gets after the rain,"
            " when the moss on the stones is dark and soft")
    assert len(long) > 200
    [c async for c in voice.synthesize(Sentence("t", 0, "Hello there, chat."))]
    before = heap_bytes()
    if before is None:
        pytest.skip("glibc's mallinfo2 is needed to see the heap")
    for seq in range(3):
        chunks = [c async for c in voice.synthesize(Sentence("t", seq + 1, long))]
        assert sum(c.samples for c in chunks) > 22050 * 5  # it was spoken: seconds of audio
    after = heap_bytes()
    assert after is not None
    assert (after[0] - before[0]) / 2**20 < 64, f"{(after[0] - before[0]) / 2**20:.0f} MB more held"


def test_missing_voices_say_what_to_install(tmp_path):
    with pytest.raises(SynthesizerError, match="omoide models pull"):
        PiperSynthesizer(tmp_path / "nope.onnx")
    with pytest.raises(SynthesizerError, match="omoide\\[coqui\\]"):
        CoquiSynthesizer("tts_models/en/ljspeech/vits")
