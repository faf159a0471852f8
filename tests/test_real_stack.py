"""The bundled real models, end to end: SmolLM2-135M-Instruct answers, the Piper voice and
espeak-ng speak, Whisper tiny.en hears. What a user would notice: the reply is English, the
character is understood, her own voice does not interrupt her, and she plays a game to the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omoide_game.tictactoe import TicTacToe

from plugins.audio import PlaybackLog
from plugins.mic_file import FRAME, FRAME_S, FileMicrophone
from plugins.tts_piper import PiperSynthesizer
from runtime import bundled
from runtime.app import App
from runtime.events import InputKind, Sentence, TurnRecord, TurnStatus
from tests.conftest import FastClock, running, write_config
from tests.fakes import ScriptedModel
from tests.quality import corpus_wer, english_share, english_words
from tests.test_live_loop import say, until

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parent.parent

# what a streamer says to her character, without numbers (a digit and its word are both right)
SPOKEN = [
    "What is your favourite game to play on stream?",
    "Can you tell me a story about the forest?",
    "I think the weather is lovely today.",
    "Please say hello to everyone in the chat.",
    "My cat is sleeping on the keyboard again.",
    "Do you want to play another round with me?",
    "That was the funniest thing I have heard all week.",
    "We should plant some turnips in the garden.",
    "How long have you been streaming tonight?",
    "I have to go and make dinner now, see you later.",
]


def needs_word_list() -> None:
    try:
        english_words()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


async def piper_wavs(folder: Path, texts: list[str]) -> list[Path]:
    """Each text spoken by the bundled Piper voice, as a WAV file."""
    voice = PiperSynthesizer(bundled.locate("voice"))
    paths = []
    for i, text in enumerate(texts):
        chunks = [c async for c in voice.synthesize(Sentence("wav", i, text))]
        path = folder / f"piper{i}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(chunks[0].rate)
            w.writeframes(b"".join(c.pcm for c in chunks))
        paths.append(path)
    return paths


def espeak_wavs(folder: Path, texts: list[str], speed: int = 150) -> list[Path]:
    paths = [folder / f"espeak{i}.wav" for i in range(len(texts))]
    for path, text in zip(paths, texts, strict=True):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(path), text], check=True)
    return paths


def listening(tmp_path: Path, model: Any, clock: FastClock, microphone: Callable[[PlaybackLog | None], FileMicrophone],
              **sections: Any) -> contextlib.AbstractAsyncContextManager[tuple[App, list[TurnRecord]]]:
    """A character hearing through `microphone` with the bundled Whisper tiny.en."""
    stt = {"enabled": True, "model": "bundled", **sections.pop("stt", {})}
    return running(write_config(tmp_path, stt=stt, **sections), model, clock=clock, microphone=microphone)


async def heard(tmp_path: Path, wavs: list[Path]) -> list[str]:
    """What the character heard of each file, each one a turn of its own."""
    clock = FastClock(6)
    mic = lambda _: FileMicrophone(wavs, clock, gap_s=2.0, keep_open=True)  # noqa: E731
    async with listening(tmp_path, ScriptedModel("Okay."), clock, mic) as (app, records):
        await until(lambda: len(records) == len(wavs), timeout=180)
    assert all(r.inputs[0].kind is InputKind.TRANSCRIPT for r in records)
    return [" ".join(e.text for e in r.inputs) for r in records]


async def test_the_piper_voice_is_understood_by_whisper_tiny_en(tmp_path):
    transcripts = await heard(tmp_path, await piper_wavs(tmp_path, SPOKEN))
    rate = corpus_wer(list(zip(SPOKEN, transcripts, strict=True)))
    assert rate <= 0.10, f"word error rate {rate:.3f}: {transcripts}"


async def test_espeak_ng_is_understood_well_enough(tmp_path):
    transcripts = await heard(tmp_path, espeak_wavs(tmp_path, SPOKEN))
    rate = corpus_wer(list(zip(SPOKEN, transcripts, strict=True)))
    assert rate <= 0.35, f"word error rate {rate:.3f}: {transcripts}"
    # the measure can say no: the same transcripts against the sentences shifted by one
    shifted = corpus_wer(list(zip(SPOKEN[1:] + SPOKEN[:1], transcripts, strict=True)))
    assert shifted > 0.7


def test_a_typed_question_gets_an_english_reply_spoken_by_the_piper_voice(tmp_path, bundled_model_dir):
    """`echo "Hi! What are you playing today?" | omoide chat` with the shipped config.toml."""
    needs_word_list()
    env = {**os.environ, "OMOIDE_MEMORY__DATABASE": str(tmp_path / "omoide.db"),
           "OMOIDE_MODEL__MODELS_DIR": str(bundled_model_dir.parent.parent), "OMOIDE_MODEL__SEED": "1",
           "OMOIDE_LEARNING__ADAPTERS": str(tmp_path / "adapters"), "OMOIDE_AUDIO__OUTPUT": "silent",
           "OMOIDE_AVATAR__PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--config", str(ROOT / "config.toml"), "chat"],
                          input="Hi! What are you playing today?\n", capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    replies = [line.removeprefix("Komorebi: ") for line in done.stdout.splitlines() if line.startswith("Komorebi: ")]
    reply = replies[-1].strip()
    assert len(reply.split()) >= 5 and english_share(reply) >= 0.8, reply
    assert "fallback voice" not in done.stderr  # the Piper voice spoke every sentence
    spoken, timings, model = sqlite3.connect(tmp_path / "omoide.db").execute(
        "SELECT spoken_text, timings, model FROM turns WHERE status = 'complete' ORDER BY started_at DESC").fetchone()
    assert spoken == reply and "first_audio" in json.loads(timings)
    assert model == "SmolLM2-135M-Instruct (bundled)"


FEEDBACK = "Hello chat. I am talking to myself now, on and on, to see if I hear myself. Done."


async def test_her_own_piper_voice_in_the_microphone_interrupts_nothing(tmp_path):
    clock = FastClock(2)
    mics: list[FileMicrophone] = []

    def mic(playback: PlaybackLog | None) -> FileMicrophone:
        mics.append(FileMicrophone([], clock, keep_open=True, echo=playback, echo_gain=0.8, echo_delay_s=0.06))
        return mics[-1]

    async with listening(tmp_path, ScriptedModel(FEEDBACK), clock, mic,
                         tts={"engine": "piper", "piper": {"voice": "bundled"}}) as (app, records):
        say(app, "say something")
        await until(lambda: records, timeout=120)
        [listener] = [s for s in app.director.sources if hasattr(s, "echo_frames")]
    assert listener.echo_frames > 20, "the playback never reached the microphone"
    assert [r.status for r in records] == [TurnStatus.COMPLETE] and records[0].spoken_text == FEEDBACK
    assert records[0].false_interruptions == 0 and "barge_in" not in records[0].timings


class CuedMicrophone(FileMicrophone):
    """A question, then silence until `cue()` holds, then `after_s` more, then the interruption:
    speech over her reply however long this machine takes to start it."""

    def __init__(self, question: Path, interruption: Path, clock: FastClock, cue: Callable[[], bool],
                 after_s: float) -> None:
        super().__init__([question], clock, tail_s=0.5)
        self.then = FileMicrophone([interruption], clock, lead_s=after_s, keep_open=True)
        self.cue = cue

    async def frames(self) -> AsyncIterator[tuple[float, np.ndarray]]:
        async for t, frame in super().frames():
            yield t, frame
        while not self.cue():
            t = self.clock.now()
            await self.clock.sleep(FRAME_S)
            yield t, np.zeros(FRAME, np.float32)
        async for t, frame in self.then.frames():
            yield t, frame


async def test_speaking_over_her_reply_cuts_it_and_is_answered_next(tmp_path):
    # no commas: Piper pauses at one long enough to end an utterance there
    question, interruption = await piper_wavs(tmp_path, ["Hello there what are you playing today?",
                                                         "Wait wait stop talking for a second please."])
    clock = FastClock(2)
    def mic(playback: PlaybackLog | None) -> FileMicrophone:
        assert playback is not None
        # once her voice is playing, three seconds more (her first sentence heard), then the viewer speaks
        return CuedMicrophone(question, interruption, clock, lambda: bool(playback.read(clock.now() - 0.1, 1600).any()),
                              after_s=3.0)

    long = ("Hello there, friend. I have a lot to say today. The first thing is about turnips. "
            "The second thing is about the weather. The third thing is about music. The fourth is a secret.")
    async with listening(tmp_path, ScriptedModel(long), clock, mic, turn={"max_sentences": 0},
                         tts={"engine": "piper", "piper": {"voice": "bundled"}}) as (app, records):
        await until(lambda: len(records) == 2, timeout=120)
    first, second = records
    assert first.status is TurnStatus.INTERRUPTED and first.interrupt_reason == "barge-in"
    assert first.spoken_text and long.startswith(first.spoken_text) and "fourth" not in first.spoken_text
    assert second.inputs[0].kind is InputKind.TRANSCRIPT and "stop talking" in second.inputs[0].text.lower()


async def test_the_real_model_plays_tic_tac_toe_to_the_end_with_every_move_valid(tmp_path, real_model):
    config = write_config(tmp_path, game={"enabled": True, "port": 0}, turn={"max_sentences": 1})
    async with running(config, real_model, 50) as (app, records):
        game = TicTacToe(f"ws://127.0.0.1:{app.games.port}", seed=0)
        winner = await asyncio.wait_for(game.run(), 300)
        await until(lambda: not app.director.busy, timeout=120)
    xs = [cell for who, cell in game.moves if who == "X"]
    assert winner in ("X", "O", "draw") and len({c for _, c in game.moves}) == len(game.moves)
    attempts = [a for r in records for a in r.actions]
    assert [a["success"] for a in attempts] == [True] * len(xs)  # never refused: every move legal
    assert all(r.spoken_text for r in records if r.actions)  # and she said something about each
