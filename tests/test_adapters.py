"""The adapter registry (versions, activation, rollback, diff, safe writes), the live swap of a
running model (the same replies as a fresh load, never mid-reply), and the training schedule."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from persona_model.adapters import AdapterRegistry, RegistryError, diff
from persona_model.generation import Sampling
from persona_model.local import LocalPersonaModel
from runtime.config import ScheduleConfig
from runtime.events import Prompt
from runtime.learning import TrainingSchedule


def fake_adapter(folder: Path, base: Path | None = None, seed: int = 0, rank: int = 4) -> Path:
    """A real peft adapter folder: on `base` with random weights, or just its config."""
    if base is None:
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
        return folder
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=rank, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.5)  # an adapter that changes what the model says
    model.save_pretrained(folder)
    return folder


def metrics(recall: float) -> dict[str, Any]:
    return {"candidate": {"recall": recall, "general NLL": 3.0}, "current": {"recall": 0.25}}


def test_versions_activate_rollback_and_diff(tmp_path):
    reg = AdapterRegistry(tmp_path / "adapters")
    assert reg.active is None and reg.versions() == []
    v1 = reg.register(fake_adapter(tmp_path / "a"), parent=None, window="w0001", base="tiny", passed=True,
                      metrics=metrics(0.8))
    v2 = reg.register(fake_adapter(tmp_path / "b"), parent="v0001", window="w0002", base="tiny", passed=False,
                      metrics=metrics(0.3))
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert (reg.path("v0002") / "adapter_config.json").is_file()  # copied in: the run folder may go
    assert reg.active is None  # registering never activates
    reg.activate("v0001")
    with pytest.raises(RegistryError, match="failed its gate"):
        reg.activate("v0002")
    with pytest.raises(RegistryError, match="no adapter version 'v0009'"):
        reg.activate("v0009")
    reg.activate("v0002", force=True)
    assert reg.active.version == "v0002"  # type: ignore[union-attr]
    assert reg.rollback().version == "v0001"  # type: ignore[union-attr]
    assert reg.rollback() is None  # back to the base model
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    rows = {name: (a, b) for name, a, b in diff(reg.get("v0001"), reg.get("v0002"))}
    assert rows["recall"] == (0.8, 0.3) and rows["window"] == ("w0001", "w0002") and "general NLL" not in rows


def test_a_damaged_registry_is_named_and_its_backup_kept(tmp_path):
    reg = AdapterRegistry(tmp_path)
    reg.register(fake_adapter(tmp_path / "a"), parent=None, window="w0001", base="tiny", passed=True, metrics={})
    reg.activate("v0001")
    good = reg.file.read_text()
    reg.file.write_text('{"active": "v00')  # e.g. edited by hand and cut short
    with pytest.raises(RegistryError, match="not valid JSON.*registry.json.bak"):
        _ = reg.active
    assert json.loads((tmp_path / "registry.json.bak").read_text())["versions"]  # the last good state
    reg.file.write_text(good)
    assert reg.active.version == "v0001"  # type: ignore[union-attr]


PROMPT = Prompt("<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n", (), 0)


async def reply(model: LocalPersonaModel) -> str:
    return "".join([piece async for piece in model.stream(PROMPT)])


@pytest.mark.model
async def test_a_swapped_adapter_answers_exactly_as_a_fresh_load(tiny_model_dir, tmp_path):
    greedy = Sampling(max_new_tokens=10, temperature=0)
    a = fake_adapter(tmp_path / "a", tiny_model_dir, seed=1)
    b = fake_adapter(tmp_path / "b", tiny_model_dir, seed=2)
    c = fake_adapter(tmp_path / "c", tiny_model_dir, seed=3, rank=2)  # another rank: loaded beside, old dropped
    fresh = {name: await reply(LocalPersonaModel.load(tiny_model_dir, adapter_path=path, sampling=greedy))
             for name, path in (("a", a), ("b", b), ("c", c))}
    fresh["base"] = await reply(LocalPersonaModel.load(tiny_model_dir, sampling=greedy))
    assert len(set(fresh.values())) == 4  # the adapters do change the replies

    live = LocalPersonaModel.load(tiny_model_dir, sampling=greedy)  # starts with none: the first adds LoRA layers
    for name, path in (("a", a), ("b", b), ("base", None), ("c", c), ("a", a), ("base", None)):
        live.stage_adapter(path, None if path is None else name)
        assert await live.swap_when_free() is not None
        assert live.adapter == (None if name == "base" else name)
        assert await reply(live) == fresh[name], name
    assert len(live.swaps) == 6


@pytest.mark.model
async def test_a_swap_never_lands_inside_a_reply(tiny_model_dir, tmp_path):
    live = LocalPersonaModel.load(tiny_model_dir, adapter_path=fake_adapter(tmp_path / "a", tiny_model_dir, seed=1),
                                  adapter_name="a", sampling=Sampling(max_new_tokens=10, temperature=0))
    b = fake_adapter(tmp_path / "b", tiny_model_dir, seed=2)
    expected_a = await reply(live)
    stream = live.stream(PROMPT)
    pieces = [await anext(stream)]
    await asyncio.to_thread(live.stage_adapter, b, "b")
    assert await live.swap_when_free() is None  # a reply is being generated: it is left for the next
    pieces += [p async for p in stream]
    assert "".join(pieces) == expected_a and live.adapter == "a"
    after = await reply(live)  # the next reply swaps first
    assert live.adapter == "b" and after != expected_a and len(live.swaps) == 1


class Wall:
    def __init__(self, at: str) -> None:
        self.now = dt.datetime.fromisoformat(at)

    def __call__(self) -> dt.datetime:
        return self.now


async def test_schedule_trains_after_n_turns_and_daily(tmp_path):
    turns = [0]

    async def new_turns() -> int:
        return turns[0]

    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x'); print('trained')"]
    wall = Wall("2026-11-28T03:00")
    every = TrainingSchedule(ScheduleConfig(after_turns=5), new_turns, command, tmp_path / "train.log",
                             check_s=0.01, now=wall)
    task = asyncio.create_task(every.run())
    await asyncio.sleep(0.1)
    assert every.runs == []  # 0 new turns
    turns[0] = 5
    for _ in range(500):
        if every.runs:
            break
        await asyncio.sleep(0.01)
    turns[0] = 0  # the run curated them into a window
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert every.runs[0] == 0 and marker.read_text().startswith("x")
    assert "trained" in (tmp_path / "train.log").read_text() and "5 new turns" in (tmp_path / "train.log").read_text()

    daily = TrainingSchedule(ScheduleConfig(at="04:30", min_turns=2), new_turns, command, tmp_path / "train.log",
                             check_s=0.01, now=wall)
    assert daily.due(3) is None  # 03:00
    wall.now = dt.datetime.fromisoformat("2026-11-28T04:31")
    assert daily.due(1) is None  # too little new to learn
    assert daily.due(2) == "daily at 04:30"
    assert daily.due(9) is None  # once a day
    wall.now = dt.datetime.fromisoformat("2026-11-29T04:30")
    assert daily.due(2) == "daily at 04:30"


def test_an_adapter_of_another_base_model_is_refused_in_one_line(tmp_path, tiny_model_dir, capsys, caplog):
    """The tiny model's adapter is live; the user switches model.id to another model (the learner
    shape, as docs/learning.md suggests). Before: an 89-line peft "size mismatch" traceback."""
    from persona_model.tiny import build
    from runtime import models
    from runtime.cli import main
    from runtime.config import load
    from tests.conftest import write_config

    other = build(tmp_path / "learner", like="learner", train_steps=0)
    tiny = write_config(tmp_path, model={"id": str(tiny_model_dir)}, learning={"adapters": str(tmp_path / "adapters")})
    tiny_registry = models.adapter_registry(load(tiny, env={}))
    tiny_registry.register(fake_adapter(tmp_path / "a", tiny_model_dir), parent=None, window="w0001",
                           base=models.base_of(load(tiny, env={})), passed=True, metrics={})
    tiny_registry.activate("v0001")

    (tmp_path / "learner.toml").write_text(tiny.read_text().replace(str(tiny_model_dir), str(other)))
    learner = load(tmp_path / "learner.toml", env={})
    model = models.model_from(learner)  # starts, on the base model
    assert model.adapter is None
    [warning] = [r for r in caplog.records if "another base model" in r.getMessage()]
    assert "omoide adapters rollback" in warning.getMessage() and "v0001" in warning.error
    capsys.readouterr()  # the builds' progress bars
    assert main(["adapters", "activate", "v0001", "--force", "--config", str(tmp_path / "learner.toml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v0001 was trained on" in err[0] and str(tiny_model_dir) in err[0]
    assert main(["adapters", "list", "--config", str(tmp_path / "learner.toml")]) == 0
    assert "does not fit the model configured now" in capsys.readouterr().out


async def test_a_following_character_keeps_its_adapter_when_one_of_another_base_is_activated(tmp_path, caplog):
    from tests.fakes import ScriptedModel

    class Target(ScriptedModel):
        adapter: str | None = None
        staged: list[str | None] = []

        def stage_adapter(self, path: Path | None, version: str | None) -> None:
            self.staged.append(version)

        async def swap_when_free(self) -> float | None:
            return 0.0

    reg = AdapterRegistry(tmp_path / "adapters", base="/models/learner")
    reg.register(fake_adapter(tmp_path / "a"), parent=None, window="w0001", base="/models/tiny", passed=True, metrics={})
    AdapterRegistry(tmp_path / "adapters").activate("v0001")  # by a tool that does not know the base
    from persona_model.adapters import AdapterFollower

    model = Target("hi")
    await AdapterFollower(reg, model).follow()
    await AdapterFollower(reg, model).follow()
    assert model.staged == [] and model.adapter is None
    assert len([r for r in caplog.records if "another base model" in r.getMessage()]) == 2  # one per follower
