"""The server backend against a real llama.cpp server (llama-cpp-python's, an optional extra that
`make test` builds once and reuses) serving the tiny model as a GGUF file written here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (make test-deps)")

from persona_model.generation import Sampling  # noqa: E402
from persona_model.gguf_export import write_gguf  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from persona_model.server import ServerPersonaModel, ServerSettings  # noqa: E402
from runtime.events import InputEvent, InputKind, Persona, Prompt, PromptContext  # noqa: E402
from runtime.ports import ModelUnavailable  # noqa: E402
from tests.conftest import running, write_config  # noqa: E402

pytestmark = pytest.mark.model
CARD = Path(__file__).resolve().parent.parent / "persona_model" / "characters" / "komorebi.json"
GREEDY = Sampling(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0)
NO_PENALTY = {"repeat_penalty": 1.0}  # llama-cpp-python's default is 1.1; OpenAI's API has no such field
SCHEMA = {"type": "object", "required": ["move", "taunt"],
          "properties": {"move": {"enum": ["rock", "paper", "scissors"]}, "taunt": {"type": "string", "maxLength": 20}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1, its output kept."""

    def __init__(self, gguf: Path, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048"], stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}/models", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama.cpp's server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._out.close()


@pytest.fixture(scope="module")
def gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(gguf, free_port(), tmp_path_factory.mktemp("llama") / "server.log")
    yield server
    server.stop()


def context(text: str = "Hello chat, what do you like?") -> PromptContext:
    return PromptContext(Persona("Tiny", "A little robot."), (InputEvent(InputKind.CHAT, text, "test", 0.0, "ann"),))


async def collect(model: ServerPersonaModel | LocalPersonaModel, prompt: Prompt) -> list[str]:
    async with contextlib.aclosing(model.stream(prompt)) as pieces:
        return [p async for p in pieces]


async def test_llamacpp_streams_the_same_greedy_reply_as_the_local_backend(llama, tiny_model_dir):
    local = LocalPersonaModel.load(tiny_model_dir, name="tiny", sampling=GREEDY)
    # the server reads 2,048 positions (--n_ctx), as the tiny model does: the same prompt budget
    budget = local.renderer.max_tokens
    server = ServerPersonaModel(ServerSettings(llama.url, sampling=GREEDY, extra=NO_PENALTY, max_prompt_tokens=budget),
                                tokenizer=local.tokenizer)
    prompt = server.render(context())
    assert prompt == local.render(context())  # the same tokenizer and budget: the same prompt
    pieces = await collect(server, prompt)
    assert len(pieces) > 5  # streamed, piece by piece
    assert "".join(pieces) == "".join(await collect(local, prompt)) != ""
    assert server.name.endswith("tiny.gguf")
    await server.aclose()


async def test_closing_the_stream_mid_reply_stops_the_server(llama):
    # the end-of-reply token is banned, so the reply would run to 1,500 tokens
    model = ServerPersonaModel(ServerSettings(llama.url, sampling=Sampling(max_new_tokens=1500, temperature=0.0),
                                              extra={"logit_bias": {"2": -100}}))
    stream = model.stream(model.render(context()))
    got = [await anext(stream) for _ in range(5)]
    await stream.aclose()
    assert len(got) == 5 and model.last_stats.stopped_early
    # the next request is answered in full (the server is not still busy with the closed one)
    model.settings.extra.clear()  # type: ignore[attr-defined]
    assert "".join(await collect(model, model.render(context("again?"))))
    await asyncio.sleep(0.5)
    runs = [int(line.split("/")[1].split()[0]) for line in llama.log.read_text().splitlines()
            if "eval time" in line and "prompt eval" not in line and "runs" in line]
    assert runs and max(runs) < 1500  # the server's own count: no reply ran to its end
    await model.aclose()


async def test_game_json_follows_the_schema_through_the_servers_structured_output(llama):
    model = ServerPersonaModel(ServerSettings(llama.url, sampling=Sampling(temperature=1.0)))
    prompt = model.render(context("Pick rock, paper or scissors, and taunt me."))
    for _ in range(5):
        document = json.loads(await model.json(prompt, SCHEMA, max_new_tokens=60))
        jsonschema.validate(document, SCHEMA)
    # llama-cpp-python refuses OpenAI's json_schema (HTTP 500) and takes a schema in json_object
    assert model._format == "json_object"
    await model.aclose()


async def test_a_server_that_is_down_and_comes_back_is_used_again(gguf, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    model = ServerPersonaModel(ServerSettings(f"http://127.0.0.1:{port}/v1", model="tiny", retry_min_s=0.3))
    with pytest.raises(ModelUnavailable, match="cannot be reached"):
        await collect(model, model.render(context()))
    with pytest.raises(ModelUnavailable, match="is down; next try in"):
        await collect(model, model.render(context()))
    server = await asyncio.to_thread(LlamaServer, gguf, port, tmp_path / "server.log")
    try:
        await asyncio.sleep(0.6)  # past the backoff (it doubled once)
        assert "".join(await collect(model, model.render(context())))
    finally:
        server.stop()
    assert caplog.text.count("not answering") == 1 and caplog.text.count("answers again") == 1
    await model.aclose()


async def test_a_character_answers_chat_through_llamacpp(llama, tmp_path):
    from runtime.config import load
    from runtime.models import server_model_from

    path = write_config(tmp_path, model={"backend": "server", "max_new_tokens": 40},
                        server={"url": llama.url})
    async with running(path, server_model_from(load(path, env={}))) as (app, records):
        app.director.submit(InputEvent(InputKind.CHAT, "hi, who are you?", "test", app.director.cast.clock.now(), "ann"))
        async with asyncio.timeout(60):
            while not records:
                await asyncio.sleep(0.05)
    record = records[0]
    assert record.status == "complete" and record.generated_text and record.model.endswith("tiny.gguf")
    assert record.messages[-1].content.endswith("hi, who are you?")


@pytest.mark.real
async def test_the_bundled_gguf_served_by_llamacpp_answers_as_the_character(tmp_path, bundled_model_dir):
    """The README's way to a faster CPU model: llama.cpp serving the same bundled GGUF file."""
    from runtime import bundled
    from runtime.config import load
    from runtime.models import server_model_from
    from tests.quality import english_share, english_words

    try:
        english_words()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    gguf = bundled.locate("llm")
    server = await asyncio.to_thread(LlamaServer, gguf, free_port(), tmp_path / "server.log")
    try:
        card = CARD
        path = write_config(tmp_path, model={"backend": "server", "seed": 2, "max_new_tokens": 60},
                            server={"url": server.url, "tokenizer": str(bundled_model_dir)},
                            character={"card": str(card), "greet": False})
        async with running(path, server_model_from(load(path, env={}))) as (app, records):
            app.director.submit(InputEvent(InputKind.CHAT, "Hi! What are you playing today?", "test",
                                           app.director.cast.clock.now(), "ann"))
            async with asyncio.timeout(120):
                while not records:
                    await asyncio.sleep(0.05)
    finally:
        server.stop()
    [record] = records
    assert record.status == "complete" and record.model.endswith(gguf.name)
    assert len(record.spoken_text.split()) >= 5 and english_share(record.spoken_text) >= 0.8, record.spoken_text
    assert "<|im_start|>system\nYou are Komorebi" in record.prompt  # rendered with the model's own template
