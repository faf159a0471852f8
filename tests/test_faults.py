"""Faults a night live brings, injected for real: the process killed (SIGKILL) in a write burst,
in training and in an adapter activation; the disk full while logging; the model breaking or
hanging mid-reply; the voice hanging; the clock jumping. Each asserts what the user would notice
and what is stored afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from memory.store import SqliteMemory
from persona_model.adapters import AdapterRegistry
from runtime.events import AudioChunk, InputEvent, InputKind, Prompt, PromptContext, Sentence
from tests.conftest import FastClock, running, write_config
from tests.fakes import ScriptedModel
from tests.harness import until

ROOT = Path(__file__).resolve().parent.parent


def child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


BURST = """
import asyncio, sys
from memory.store import SqliteMemory
from runtime.events import InputEvent, InputKind, TurnRecord
async def main():
    store = await SqliteMemory.open(sys.argv[1])
    await store.remember(TurnRecord(turn_id="t-open", inputs=(), persona="p", model="m", adapter=None))
    i = 0
    while True:
        batch = [InputEvent(InputKind.CHAT, f"line {i + n}", "twitch", 0.0, "ann", id=f"in-{i + n}") for n in range(50)]
        await asyncio.gather(*(store.log_input(e) for e in batch))
        print(*(e.id for e in batch), flush=True)  # acknowledged: committed
        i += 50
asyncio.run(main())
"""


async def test_sigkill_in_a_write_burst_loses_nothing_acknowledged(tmp_path):
    db = tmp_path / "omoide.db"
    proc = child(BURST, str(db))
    acked: list[str] = []
    assert proc.stdout is not None
    while len(acked) < 2000:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, proc.stderr.read() if proc.stderr else ""
        acked += line.split()
    kill(proc)  # mid-burst: more writes were in flight
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {i for (i,) in conn.execute("SELECT id FROM inputs")}
    assert set(acked) <= stored
    conn.close()
    store = await SqliteMemory.open(db)  # the next start: the turn cut by the kill says so
    await store.aclose()
    row = sqlite3.connect(db).execute("SELECT status, error FROM turns WHERE id = 't-open'").fetchone()
    assert row == ("failed", "process ended mid-turn")


ACTIVATE = """
import sys
from persona_model.adapters import AdapterRegistry
reg = AdapterRegistry(sys.argv[1])
n = 0
while True:
    reg.activate(("v0001", "v0002")[n % 2])
    n += 1
    if n % 20 == 0:
        print(n, flush=True)
"""


def test_sigkill_in_adapter_activations_never_leaves_a_broken_registry(tmp_path):
    reg = AdapterRegistry(tmp_path / "adapters")
    for i in (1, 2):
        folder = tmp_path / f"a{i}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
        reg.register(folder, parent=None, window=f"w{i:04d}", base="tiny", passed=True, metrics={})
    reg.activate("v0001")
    for delay in (0.0, 0.013, 0.031, 0.057, 0.1):
        proc = child(ACTIVATE, str(tmp_path / "adapters"))
        assert proc.stdout is not None
        proc.stdout.readline()  # it is activating, over and over
        time.sleep(delay)
        kill(proc)
        again = AdapterRegistry(tmp_path / "adapters")
        active = again.active  # parses: never half-written
        assert active is not None and active.version in ("v0001", "v0002")
        assert again.path(active.version).is_dir()
        json.loads((tmp_path / "adapters" / "registry.json").read_text())


TRAIN = """
import sys
from pathlib import Path
from persona_model.train.sft import SftSettings, train
s = SftSettings(max_steps=120, checkpoint_every=10, rows=2, seq_len=128, lr=3e-3, seed=3)
train(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), s, progress=False)
"""


@pytest.mark.model
def test_sigkill_in_training_resumes_to_the_same_adapter(tiny_model_dir, tmp_path):
    from persona_model.train.sft import SftSettings, train
    from tests.test_sft import examples, write

    data = tmp_path / "train.jsonl"
    write(data, examples())
    out = tmp_path / "run"
    proc = child(TRAIN, str(tiny_model_dir), str(data), str(out))
    state = out / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.is_file():  # killed after its first checkpoints, in the middle of the run
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)
    kill(proc)
    assert not (out / "adapter").exists()
    s = SftSettings(max_steps=120, checkpoint_every=10, rows=2, seq_len=128, lr=3e-3, seed=3)
    resumed = train(tiny_model_dir, data, out, s, progress=False)
    whole = train(tiny_model_dir, data, tmp_path / "whole", s, progress=False)
    assert resumed.steps == 120 and resumed.losses == pytest.approx(whole.losses, abs=1e-5)




def chat(app: Any, text: str) -> None:
    app.director.submit(InputEvent(InputKind.CHAT, text, "twitch", app.director.cast.clock.now(), "ann",
                                   meta={"user_id": "1"}))


async def test_a_full_disk_holds_the_log_and_stores_it_when_space_returns(tmp_path, tiny_model, caplog):
    path = write_config(tmp_path, model={"max_new_tokens": 8})
    async with running(path, tiny_model) as (app, records):
        db = app.memory._db
        (pages,) = await (await db.execute("PRAGMA page_count")).fetchone()
        await db.execute(f"PRAGMA max_page_count = {pages}")  # no room to grow: SQLITE_FULL, as a full disk
        for i in range(3):
            chat(app, f"are you there {i}?")
        await until(lambda: len(records) >= 3)  # the character kept talking
        assert all(r.spoken_text for r in records)
        assert app.memory.writer.full and caplog.text.count("the disk is full") == 1  # the operator told once
        await db.execute("PRAGMA max_page_count = 1073741823")  # space returns
        await until(lambda: not app.memory.writer.full, 30)
        await app.memory.flush()
    conn = sqlite3.connect(tmp_path / "omoide.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sorted(t for (t,) in conn.execute("SELECT text FROM inputs")) == [f"are you there {i}?" for i in range(3)]
    assert [s for (s,) in conn.execute("SELECT status FROM turns")] == ["complete"] * 3


def waited_for_disk(caplog: Any) -> list[str]:
    """Why each reply that went ahead without its input stored did so."""
    return [r.error for r in caplog.records if r.getMessage() == "input not stored yet; answering anyway"]


async def test_ten_minutes_of_full_disk_under_steady_chat_keep_memory_bounded_and_her_answering(tmp_path, caplog):
    """A disk that stays full for ten minutes while chat runs at 20 lines a second (on a clock 50x
    faster than real time): what waits to be written stays under its bound, the oldest is dropped
    and counted, no reply waits for the disk, and the newest lines are stored once space returns."""
    clock = FastClock(50.0)
    path = write_config(tmp_path)
    async with running(path, ScriptedModel("Still here, chat!", delay=0.0005), clock=clock) as (app, records):
        store = app.memory
        store.writer.limit = 3000  # a small bound that ten minutes of chat passes (the default is 100,000)
        db = store._db
        (pages,) = await (await db.execute("PRAGMA page_count")).fetchone()
        await db.execute(f"PRAGMA max_page_count = {pages}")  # no room to grow: SQLITE_FULL, as a full disk
        start, sent, peak, answered_at = clock.now(), 0, 0, []
        app.director.on_turn = lambda r: (records.append(r), answered_at.append(clock.now() - start))
        while sent < 12_000:  # ten minutes at 20 a second, on the fast clock (however busy the machine)
            while sent < min(12_000, (clock.now() - start) * 20):
                app.director.submit(InputEvent(InputKind.CHAT, f"chat line number {sent}", "twitch", clock.now(),
                                               f"viewer{sent % 50}", meta={"user_id": str(sent % 50)}))
                sent += 1
            peak = max(peak, len(store.writer.pending))
            await asyncio.sleep(0.005)
        assert peak <= 3000 and store.writer.dropped > 0
        assert store.writer.full and "the disk is full" in caplog.text and "oldest writes are dropped" in caplog.text
        # she kept answering, in every third of the ten minutes (a busy machine slows the fast clock's turns)
        assert {int(t // 200) for t in answered_at if t < 600} == {0, 1, 2}
        assert all(r.spoken_text for r in records)
        # no reply waited for the disk: it said at once that it was full
        assert waited_for_disk(caplog) and "timed out" not in waited_for_disk(caplog)
        await db.execute("PRAGMA max_page_count = 1073741823")  # space returns
        await until(lambda: not store.writer.full, 60)
        await store.flush()
    conn = sqlite3.connect(tmp_path / "omoide.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {t for (t,) in conn.execute("SELECT text FROM inputs")}
    assert {f"chat line number {i}" for i in range(sent - 200, sent)} <= stored  # the newest were kept
    assert len(stored) < sent  # and the oldest beyond the bound were not


async def test_a_stalled_disk_delays_a_reply_by_two_seconds_at_most(tmp_path, caplog):
    """Another process holds the database's write lock: the writer waits on it (busy_timeout, 5 s),
    and the reply goes ahead after COMMIT_WAIT_S instead of waiting with it."""
    path = write_config(tmp_path)
    async with running(path, ScriptedModel("Here I am."), speed=1.0) as (app, records):
        await app.memory.flush()
        other = sqlite3.connect(tmp_path / "omoide.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # a stalled disk, as the writer sees it
        try:
            started = time.monotonic()
            chat(app, "are you stuck?")
            await until(lambda: records, 30)
            waited = time.monotonic() - started
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert records[0].spoken_text == "Here I am."
        assert 1.5 < waited < 4.5 and waited_for_disk(caplog) == ["timed out"]


class Breaking:
    """The real tiny model behind it, made to break or hang on the turns a test names."""

    def __init__(self, model: Any, fail: dict[int, str]) -> None:
        self.model, self.fail, self.n = model, fail, 0

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def adapter(self) -> str | None:
        return self.model.adapter

    @property
    def traits(self) -> Any:
        return self.model.traits

    def render(self, context: PromptContext) -> Prompt:
        return self.model.render(context)

    async def aclose(self) -> None:
        pass

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        self.n += 1
        how = self.fail.get(self.n)
        yield "Well, let me think"
        if how == "raise":
            raise RuntimeError("CUDA error: device-side assert triggered")
        if how == "hang":
            await asyncio.Event().wait()
        async for piece in self.model.stream(prompt):
            yield piece

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        return await self.model.json(prompt, schema, max_new_tokens)


async def test_a_model_that_breaks_or_hangs_mid_reply_ends_the_turn_with_the_fallback_line(tmp_path, tiny_model):
    path = write_config(tmp_path, model={"max_new_tokens": 8},
                        turn={"model_stall_s": 0.5, "fallback_line": "Oops, where was I? Ask me again."})
    async with running(path, Breaking(tiny_model, {1: "raise", 2: "hang"})) as (app, records):
        for n, text in enumerate(("one?", "two?", "three?")):
            chat(app, text)
            await until(lambda n=n: len(records) > n)
    broke, hung, fine = records
    for r in (broke, hung):
        assert r.status == "failed" and r.spoken_text.endswith("Oops, where was I? Ask me again.")
        assert r.spoken_text.startswith("Well, let me think")
    assert "CUDA error" in broke.error and "no text from the model for 0.5 s" in hung.error
    assert fine.status == "complete" and "Oops" not in fine.spoken_text  # the next turn works
    conn = sqlite3.connect(tmp_path / "omoide.db")
    assert [s for (s,) in conn.execute("SELECT status FROM turns ORDER BY started_at")] == ["failed", "failed", "complete"]


class HangingVoice:
    """A TTS engine that hangs on its first sentence (a stuck synthesis process), then works."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.n = inner, 0

    async def synthesize(self, sentence: Sentence) -> AsyncIterator[AudioChunk]:
        self.n += 1
        if self.n == 1:
            await asyncio.Event().wait()
        async for chunk in self.inner.synthesize(sentence):
            yield chunk


async def test_a_hanging_voice_costs_one_sentence_not_the_turn(tmp_path, tiny_model, caplog):
    from plugins.tts_espeak import EspeakSynthesizer
    from runtime.voices import FallbackSynthesizer

    path = write_config(tmp_path, model={"max_new_tokens": 40}, turn={"tts_stall_s": 0.5})
    async with running(path, tiny_model) as (app, records):
        cast = app.director.cast
        app.director.cast = dataclasses.replace(cast, synthesizer=HangingVoice(cast.synthesizer))
        chat(app, "tell me a long story")
        await until(lambda: records)
        # with espeak-ng behind it, the stalled sentence is spoken by espeak-ng instead
        app.director.cast = dataclasses.replace(cast, synthesizer=FallbackSynthesizer(
            HangingVoice(EspeakSynthesizer()), EspeakSynthesizer(), "piper", stall_s=0.2))
        chat(app, "and another one")
        await until(lambda: len(records) == 2)
    first, second = records
    assert first.status == second.status == "complete"
    assert "the voice stalled" in caplog.text
    fell_back = [r for r in caplog.records if "voice failed on a sentence" in r.getMessage()]
    assert fell_back and "no audio for 0.2 s" in fell_back[0].error


async def test_the_clock_jumping_an_hour_drops_stale_chat_and_goes_on(tmp_path, tiny_model):
    class Jumping(FastClock):
        jump = 0.0

        def now(self) -> float:
            return super().now() + self.jump

    from runtime.app import build
    from runtime.config import load

    clock = Jumping(speed=5.0)
    app = await build(load(write_config(tmp_path, model={"max_new_tokens": 30}), env={}), model=tiny_model,
                      console=False, clock=clock)
    records: list[Any] = []
    app.director.on_turn = records.append
    task = asyncio.create_task(app.director.run())
    try:
        chat(app, "first?")
        await until(lambda: app.director.current is not None)
        chat(app, "stale by the time it would be answered?")  # waits behind the first reply
        clock.jump += 3600  # the machine slept, or the clock was set: an hour passes at once
        await until(lambda: records)
        chat(app, "after the jump?")
        await until(lambda: any(r.inputs[0].text == "after the jump?" for r in records))
        assert all(r.status == "complete" for r in records)
        assert not any(r.inputs[0].text.startswith("stale") for r in records)  # an hour old: not answered
    finally:
        app.director.stop()
        await asyncio.wait_for(task, 60)
        await app.aclose()
    conn = sqlite3.connect(tmp_path / "omoide.db")  # logged all the same
    assert conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0] == 3


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A real 4 MiB filesystem (tmpfs), where mounting is allowed (root); else skipped."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({done.stderr.decode().strip()[:80]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_really_full_disk_holds_writes_until_space_returns(small_disk, caplog):
    store = await SqliteMemory.open(small_disk / "omoide.db")
    try:
        await store.log_input(InputEvent(InputKind.CHAT, "before", "twitch", 0.0, "ann", id="before"))
        filler = small_disk / "filler"
        with filler.open("wb", buffering=0) as f:  # take every byte left
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        held = [store.log_input(InputEvent(InputKind.CHAT, f"during {i} " + "x" * 2000, "twitch", 0.0, "ann",
                                           id=f"during-{i}")) for i in range(50)]
        results = await asyncio.gather(*held, return_exceptions=True)
        assert any(isinstance(r, Exception) and "not stored yet" in str(r) for r in results)
        assert store.writer.full and "the disk is full" in caplog.text
        filler.unlink()  # space returns
        await until(lambda: not store.writer.full, 30)
        await store.flush()
    finally:
        await store.aclose()
    conn = sqlite3.connect(small_disk / "omoide.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0] == 51
