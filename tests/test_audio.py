import asyncio
import logging

import numpy as np
import pytest

from plugins.audio import envelope
from plugins.speakers_silent import SilentSpeakers
from plugins.speakers_sounddevice import SoundDeviceSpeakers, open_speakers
from plugins.tts_espeak import EspeakSynthesizer, SynthesizerError
from runtime.events import Sentence
from tests.conftest import FastClock


async def test_espeak_streams_a_sentence_as_chunks_of_real_speech():
    tts = EspeakSynthesizer(chunk_ms=100)
    chunks = [c async for c in tts.synthesize(Sentence("t", 3, "Hello chat, how is everyone doing today?"))]
    assert len(chunks) > 5
    assert {c.rate for c in chunks} == {22050} and {c.seq for c in chunks} == {3}
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.samples == 2205 for c in chunks[:-1])  # 100 ms each, the last may be shorter
    total = sum(c.duration for c in chunks)
    assert 1.0 < total < 6.0
    pcm = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2")
    assert np.abs(pcm).max() > 3000  # audible, not silence
    assert all(len(c.envelope) == -(-c.samples // 441) for c in chunks)


async def test_text_that_looks_like_an_option_is_spoken_not_obeyed():
    chunks = [c async for c in EspeakSynthesizer().synthesize(Sentence("t", 0, "--version -w /tmp/x.wav"))]
    assert sum(c.samples for c in chunks) > 0


def test_a_missing_engine_names_the_install_command():
    with pytest.raises(SynthesizerError, match="apt-get install -y espeak-ng"):
        EspeakSynthesizer(binary="espeak-ng-not-here")


def test_envelope_follows_loudness():
    rate = 22050
    quiet = (np.sin(np.arange(441) / 5) * 300).astype("<i2")
    loud = (np.sin(np.arange(441) / 5) * 20000).astype("<i2")
    env = envelope(np.concatenate([quiet, loud, np.zeros(100, "<i2")]).tobytes(), rate)
    assert len(env) == 3
    assert env[0] < 0.1 < 0.9 < env[1] and env[2] == 0.0


async def test_silent_speakers_keep_real_time_pace_and_know_what_was_not_heard():
    clock = FastClock(speed=10)
    sink = SilentSpeakers(clock)
    tts = EspeakSynthesizer(chunk_ms=100)
    chunks = [c async for c in tts.synthesize(Sentence("t", 0, "One two three four five six."))]
    t0 = clock.now()
    for c in chunks[:5]:
        await sink.play(c)
    assert clock.now() - t0 >= 0.5 * 0.95  # five 100 ms chunks take half a second
    assert sink.clear() == 0  # everything handed over was played
    playing = asyncio.create_task(sink.play(chunks[5]))
    await asyncio.sleep(0.004)  # 40 ms into a 100 ms chunk
    playing.cancel()
    unheard = sink.clear()
    assert 0.2 * chunks[5].samples < unheard < 0.7 * chunks[5].samples


def test_without_an_audio_device_the_speakers_fall_back_to_silence(caplog):
    sd = pytest.importorskip("sounddevice")
    if sd.query_devices() and sd.default.device[1] >= 0:
        pytest.skip("this machine has an audio output device")
    with caplog.at_level(logging.WARNING):
        sink = open_speakers(FastClock())
    assert isinstance(sink, SilentSpeakers) and not isinstance(sink, SoundDeviceSpeakers)
    assert "no audio output device" in caplog.text and "speech will be silent" in caplog.text
