"""Shared fixtures: a tiny model built once per session, a fast clock, a character wired from a
real config with real components (SQLite file, espeak-ng, WebSocket server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class FastClock:
    """Real time, sped up: playing 3 s of speech takes 3/speed s. Keeps every ordering real."""

    def __init__(self, speed: float = 20.0) -> None:
        self.speed = speed
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from persona_model.tiny import build

    return build(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> Any:
    from persona_model.generation import Sampling
    from persona_model.local import LocalPersonaModel

    # the plumbing tests' babbling model samples hotter than a character does (config.toml: 0.6, 0.9)
    return LocalPersonaModel.load(tiny_model_dir, name="tiny", sampling=Sampling(
        max_new_tokens=60, temperature=0.8, top_p=0.95, seed=7))


@pytest.fixture(scope="session")
def bundled_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled SmolLM2-135M-Instruct, converted from its GGUF as on a user's first start, into
    a fresh models folder (about 30 s, once per session)."""
    from runtime.models import bundled_llm

    return bundled_llm(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def real_model(bundled_model_dir: Path) -> Any:
    """The bundled model as the default configuration samples it."""
    from persona_model.generation import Sampling
    from persona_model.local import LocalPersonaModel

    return LocalPersonaModel.load(bundled_model_dir, name="bundled", sampling=Sampling(seed=3))


def write_config(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    """A config.toml in tmp_path: test defaults (silent audio, port 0, a temp database) + overrides.

    A dict inside a section is a sub-table (`chat={"console": {"enabled": True}}`)."""
    base: dict[str, dict[str, Any]] = {
        "persona": {"name": "Testa", "description": "A test character."},
        "audio": {"output": "silent"},
        "avatar": {"port": 0},
        "chat": {"console": {"enabled": False}},
        # recall by words unless a test asks for the embedding model (loading it costs seconds)
        "memory": {"database": str(tmp_path / "omoide.db"), "embedding_model": "none",
                   "reflection": {"enabled": False}},
        "model": {"download": False},
        "tts": {"engine": "espeak"},  # the voice that is always there, and fast: most tests are plumbing
        "turn": {"max_sentences": 0},  # scripted replies say all they have (the cap has its own tests)
        # the drift gate scores traits a tiny model's babble has none of: its tests opt in (test_traits.py)
        "learning": {"gate": {"traits": []}},
    }
    for name, values in sections.items():
        section = base.setdefault(name, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(section.get(key), dict):
                section[key] = {**section[key], **value}
            else:
                section[key] = value
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict))
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{name}.{key}", value)

    for name, values in base.items():
        table(name, values)
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def running(config_path: Path, model: Any, speed: float = 20.0, clock: FastClock | None = None,
                  **build: Any) -> AsyncIterator[tuple[Any, list[Any]]]:
    """A character built from a config file (with `model` instead of loading one), its director
    running; yields the App and the list its TurnRecords are appended to. `build` goes to build()
    (a microphone, say)."""
    from runtime.app import build as build_app
    from runtime.config import load

    app = await build_app(load(config_path, env={}), model=model, console=False, clock=clock or FastClock(speed),
                          **build)
    records: list[Any] = []
    app.director.on_turn = records.append
    task = asyncio.create_task(app.director.run(), name="test-director")
    try:
        yield app, records
    finally:
        app.director.stop()
        await asyncio.wait_for(task, 60)
        await app.aclose()


class AvatarClient:
    """A real WebSocket client of the avatar channel that records every message."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._ws: Any = None

    async def __aenter__(self) -> AvatarClient:
        self._ws = await websockets.connect(self.url)
        self._task = asyncio.create_task(self._read(), name="test-avatar-client")
        await self.wait_for(lambda m: m["type"] == "hello")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()
        if self._task is not None:
            self._task.cancel()

    async def _read(self) -> None:
        async for raw in self._ws:
            self.messages.append(json.loads(raw))

    async def wait_for(self, pred: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if pred(m):
                    return m
            await asyncio.sleep(0.01)
        raise AssertionError(f"no matching avatar message in {timeout}s; got {[m['type'] for m in self.messages]}")


@pytest.fixture
async def avatar_client() -> AsyncIterator[type[AvatarClient]]:
    yield AvatarClient
