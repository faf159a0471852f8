"""The OpenAI-compatible server backend against peers that cannot run here, spoken to over real
HTTP: vLLM's adapter endpoints, an API key, a server that hangs, the local stand-in. (The real
llama.cpp server is in test_llamacpp.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from persona_model.adapters import AdapterFollower, AdapterRegistry
from persona_model.server import ServerPersonaModel, ServerSettings
from runtime.events import InputEvent, InputKind, Persona, Prompt, PromptContext
from runtime.fallback import FallbackModel
from runtime.ports import ModelUnavailable
from tests.conftest import running, write_config
from tests.fake_vllm import FakeVllm

PERSONA = Persona("Testa", "A test character.")


def prompt_for(model: ServerPersonaModel | FallbackModel, text: str = "hello there") -> Prompt:
    event = InputEvent(InputKind.CHAT, text, "test", 0.0, "ann")
    return model.render(PromptContext(PERSONA, (event,)))


async def reply(model: ServerPersonaModel | FallbackModel, prompt: Prompt | None = None) -> str:
    async with contextlib.aclosing(model.stream(prompt or prompt_for(model))) as pieces:
        return "".join([p async for p in pieces])


@pytest.fixture
def vllm():
    fake = FakeVllm().start()
    yield fake
    fake.stop()


def register(reg: AdapterRegistry, folder: Path, window: str) -> str:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    # trained on the configured model (model.id, "bundled" in these configs), as `omoide train` records it
    return reg.register(folder, parent=None, window=window, base="bundled", passed=True, metrics={}).version


async def test_streams_and_sends_the_messages_and_key(vllm, caplog):
    vllm.api_key = "sk-very-secret-123"
    caplog.set_level(logging.DEBUG)
    model = ServerPersonaModel(ServerSettings(vllm.url, api_key="sk-very-secret-123"))
    text = await reply(model)
    assert text == "I am base-model. Hello chat, it is good to see you here tonight."
    assert model.name == "base-model"  # none configured: the first one the server lists
    assert model.last_stats.new_tokens > 5  # it came in pieces
    body = next(b for _, path, b in vllm.requests if path == "/v1/chat/completions")
    assert body["stream"] is True
    assert body["messages"][0]["role"] == "system" and "Testa" in body["messages"][0]["content"]
    assert body["messages"][-1]["content"].endswith("hello there")
    assert vllm.auth[-1] == "Bearer sk-very-secret-123"
    assert "sk-very-secret" not in caplog.text and "sk-very-secret" not in repr(model.settings)
    await model.aclose()


async def test_a_wrong_key_is_named_and_the_model_is_unavailable(vllm):
    vllm.api_key = "right"
    model = ServerPersonaModel(ServerSettings(vllm.url, model="base-model", api_key="wrong", retry_min_s=0.01))
    with pytest.raises(ModelUnavailable, match="HTTP 401.*API key"):
        await reply(model)
    await model.aclose()


async def test_a_hanging_server_fails_the_turn_at_the_first_token_timeout_and_is_said_once(vllm, caplog):
    vllm.hang = True
    model = ServerPersonaModel(ServerSettings(vllm.url, model="base-model", first_token_timeout_s=0.3,
                                              retry_min_s=60))
    with pytest.raises(ModelUnavailable, match="did not start a reply within 0.3 s"):
        await reply(model)
    with pytest.raises(ModelUnavailable, match="is down; next try in"):  # no new request: backing off
        await reply(model)
    assert len(vllm.chat_models()) == 1
    assert caplog.text.count("not answering") == 1
    await model.aclose()


async def test_activating_a_version_loads_it_into_vllm_and_the_next_turn_uses_it(vllm, tmp_path):
    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = register(reg, tmp_path / "a", "w0001")
    v2 = register(reg, tmp_path / "b", "w0002")
    model = ServerPersonaModel(ServerSettings(vllm.url, model="base-model", adapters="vllm"))
    follower = AdapterFollower(reg, model)
    assert (await reply(model)).startswith("I am base-model.")

    reg.activate(v1)
    await follower.follow()
    assert vllm.adapter_calls() == [("load_lora_adapter", v1)]
    assert vllm.loras[v1] == str(reg.path(v1).resolve())  # the path the server loads from
    assert (await reply(model)).startswith(f"I am {v1}.")
    assert model.adapter == v1

    reg.activate(v2)
    await follower.follow()
    assert vllm.adapter_calls()[1:] == [("load_lora_adapter", v2), ("unload_lora_adapter", v1)]
    assert (await reply(model)).startswith(f"I am {v2}.")

    reg.rollback()  # back to v1
    reg.rollback()  # back to the base model
    await follower.follow()
    assert vllm.adapter_calls()[3:] == [("unload_lora_adapter", v2)]
    assert (await reply(model)).startswith("I am base-model.")
    assert model.adapter is None and vllm.loras == {}
    await model.aclose()


async def test_llamacpp_adapters_given_at_its_start_are_chosen_per_request(vllm, tmp_path, caplog):
    reg = AdapterRegistry(tmp_path / "adapters")
    v1, v2 = register(reg, tmp_path / "a", "w0001"), register(reg, tmp_path / "b", "w0002")
    vllm.llamacpp_loras = [{"id": 0, "path": f"/srv/loras/{v1}.gguf", "scale": 0.0}]  # started with --lora v1
    model = ServerPersonaModel(ServerSettings(vllm.url, model="base-model", adapters="llamacpp"))
    follower = AdapterFollower(reg, model)
    reg.activate(v1)
    await follower.follow()
    assert (await reply(model)).startswith(f"I am {v1}.gguf.")
    reg.activate(v2)  # not given to the server at its start: it says how, and keeps v1
    await follower.follow()
    said = " ".join(str(getattr(r, "error", "")) for r in caplog.records)
    assert f"not started with adapter {v2}" in said and "--lora" in said
    assert model.adapter == v1 and (await reply(model)).startswith(f"I am {v1}.gguf.")
    await model.aclose()


async def test_a_running_character_follows_the_registry_onto_the_server(vllm, tmp_path):
    path = write_config(tmp_path, model={"backend": "server"},
                        server={"url": vllm.url, "model": "base-model", "adapters": "vllm"},
                        learning={"adapters": str(tmp_path / "adapters")})
    from runtime.config import load
    from runtime.models import server_model_from

    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = register(reg, tmp_path / "a", "w0001")
    async with running(path, server_model_from(load(path, env={}))) as (app, records):
        reg.activate(v1)  # as `omoide adapters activate` does, from another process
        async with asyncio.timeout(20):
            while app.director.cast.model.adapter != v1:
                await asyncio.sleep(0.05)
        app.director.submit(InputEvent(InputKind.CHAT, "who are you?", "test", app.director.cast.clock.now(), "ann"))
        async with asyncio.timeout(30):
            while not records:
                await asyncio.sleep(0.05)
    assert records[0].adapter == v1 and records[0].generated_text.startswith(f"I am {v1}.")
    assert vllm.adapter_calls() == [("load_lora_adapter", v1)]


async def test_a_server_without_runtime_adapters_says_so_and_keeps_its_model(tmp_path, caplog):
    fake = FakeVllm(runtime_lora=False).start()  # vLLM started without VLLM_ALLOW_RUNTIME_LORA_UPDATING
    reg = AdapterRegistry(tmp_path / "adapters")
    reg.activate(register(reg, tmp_path / "a", "w0001"))
    for api in ("vllm", "none"):
        caplog.clear()
        model = ServerPersonaModel(ServerSettings(fake.url, model="base-model", adapters=api))  # type: ignore[arg-type]
        await AdapterFollower(reg, model).follow()
        assert model.adapter is None
        assert (await reply(model)).startswith("I am base-model.")
        said = {"vllm": "did not take the adapter", "none": "not set up to load adapters"}[api]
        assert said in caplog.text
        if api == "vllm":  # vLLM's own answer is passed on
            assert "load_lora_adapter answered HTTP 404" in str(caplog.records[-1].error)
        await model.aclose()
    fake.stop()


async def test_the_local_model_answers_while_the_server_is_down_and_the_server_again_when_back(
        tiny_model, tmp_path, caplog):
    fake = FakeVllm().start()
    url = fake.url
    port = int(url.split(":")[2].split("/")[0])
    fake.stop()  # down
    server = ServerPersonaModel(ServerSettings(url, model="base-model", retry_min_s=0.2, retry_max_s=0.2))
    model = FallbackModel(server, tiny_model)
    first = await reply(model)
    assert first and not first.startswith("I am")  # the tiny local model said it
    assert model.name == "tiny"
    local_prompt = prompt_for(model)  # while the server is out, the local model renders the prompt
    assert local_prompt.text.startswith("<|im_start|>system")
    await reply(model, local_prompt)

    back = FakeVllm().start(port)
    try:
        await asyncio.sleep(0.25)  # past the backoff
        assert (await reply(model)).startswith("I am base-model.")
        assert model.name == "base-model"
        assert caplog.text.count("not answering") == 1 and caplog.text.count("answers again") == 1
    finally:
        back.stop()
        await server.aclose()


async def test_a_character_on_a_dead_server_with_no_stand_in_keeps_running(tmp_path):
    """No fallback: each turn fails with the reason in its record, the runtime stays up, and
    nothing is lost."""
    fake = FakeVllm().start()
    url = fake.url
    fake.stop()
    path = write_config(tmp_path, model={"backend": "server"}, server={"url": url, "model": "base-model"})
    from runtime.config import load
    from runtime.models import server_model_from

    model = server_model_from(load(path, env={}))
    async with running(path, model) as (app, records):
        for text in ("first?", "second?"):
            app.director.submit(InputEvent(InputKind.CHAT, text, "test", app.director.cast.clock.now(), "ann"))
        async with asyncio.timeout(30):
            while len(records) < 2:
                await asyncio.sleep(0.05)
        assert all(r.status == "failed" and "ModelUnavailable" in r.error for r in records)
        app.director.submit(InputEvent(InputKind.CHAT, "third?", "test", app.director.cast.clock.now(), "ann"))
        async with asyncio.timeout(30):
            while len(records) < 3:
                await asyncio.sleep(0.05)
    db = sqlite3.connect(app.memory.path)
    assert sorted(t for (t,) in db.execute("SELECT text FROM inputs")) == ["first?", "second?", "third?"]
    assert [s for (s,) in db.execute("SELECT status FROM turns")] == ["failed"] * 3


async def test_a_duo_on_vllm_keeps_both_adapters_loaded_and_names_hers_per_request(vllm, tmp_path):
    from runtime.config import load
    from runtime.models import server_model_from
    from tests.harness import until
    from tests.test_duo import duo_config, say

    path = duo_config(tmp_path, model={"backend": "server"},
                      server={"url": vllm.url, "model": "base-model", "adapters": "vllm"})
    folders = {}
    for name in ("kage", "komorebi"):  # each trained her own first version: both are called v0001
        reg = AdapterRegistry(tmp_path / "characters" / name / "adapters")
        version = register(reg, tmp_path / f"{name}-trained", "w0001")
        reg.activate(version)
        folders[name] = str(reg.path(version).resolve())
    async with running(path, server_model_from(load(path, env={}))) as (app, records):
        for text in ("Kage, hi!", "Komorebi, hi!", "Kage, again?", "Komorebi, again?"):
            n = len(records)
            say(app, text)
            await until(lambda n=n: len(records) > n)
    # two names for the two folders, each loaded once and kept while the other speaks
    names = {folder: name for name, folder in vllm.loras.items()}
    assert set(names) == set(folders.values()) and sorted(names.values())[0] == "v0001"
    kage, komorebi = names[folders["kage"]], names[folders["komorebi"]]
    assert sorted(vllm.adapter_calls()) == [("load_lora_adapter", kage), ("load_lora_adapter", komorebi)]
    assert vllm.chat_models() == [kage, komorebi] * 2  # each request names hers
    assert [(r.persona, r.generated_text.split(".")[0]) for r in records] == [
        ("Kage", f"I am {kage}"), ("Komorebi", f"I am {komorebi}")] * 2
