"""LoRA SFT on the tiny model: the loss is on the character's words only, packed examples never
see each other, training lowers the loss, and an interrupted run resumes to exactly where an
uninterrupted one ends."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_model.train.sft import IGNORE, SftSettings, collate, encode, pack, train

pytestmark = pytest.mark.model


def examples(n: int = 24) -> list[dict]:
    names = ["Ada", "Bo", "Cy", "Dee", "Eve", "Fay"]
    pets = ["Miso", "Tofu", "Biscuit", "Pixel", "Mochi", "Yuzu"]
    out = []
    for i in range(n):
        name, pet = names[i % 6], pets[(i * 5) % 6]
        out.append({"messages": [{"role": "system", "content": "You are Testa."},
                                 {"role": "user", "content": f"What is the name of {name}'s cat?"},
                                 {"role": "assistant", "content": f"{name}'s cat is called {pet}."}]})
    return out


def write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_only_the_characters_reply_is_a_target(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, labels = encode(examples()[0], tok, 512)
    target = [t for t in labels if t != IGNORE]
    assert tok.decode(target) == "Ada's cat is called Miso." + tok.eos_token
    assert labels[: len(ids) - len(target)] == [IGNORE] * (len(ids) - len(target))  # the prompt is context
    short_ids, short_labels = encode(examples()[0], tok, 16)  # too long: the context's start goes
    assert len(short_ids) == 16 and [t for t in short_labels if t != IGNORE] == target[:8]


def test_packed_examples_never_see_each_other(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # the attention training uses
    encoded = [encode(ex, tok, 512) for ex in examples(3)]
    rows = pack([len(x) for x, _ in encoded], 4 * max(len(x) for x, _ in encoded))
    assert len(rows) == 1 and sorted(rows[0]) == [0, 1, 2]  # all three share one row
    batch = collate(rows, encoded, tok.pad_token_id)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        at = 0
        for i in rows[0]:
            alone = model(torch.tensor([encoded[i][0]])).logits[0]
            assert torch.allclose(packed[at:at + len(alone)], alone, atol=1e-4)
            at += len(alone)
    assert pack([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]  # longest first, first fit


def test_training_lowers_the_loss_and_a_resumed_run_ends_where_an_unbroken_one_does(tiny_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    write(data, examples())
    s = SftSettings(max_steps=8, checkpoint_every=4, rows=2, seq_len=128, lr=3e-3, seed=3)
    whole = train(tiny_model_dir, data, tmp_path / "whole", s, progress=False)
    assert whole.steps == 8 and whole.target_tokens > 0 and whole.tokens > whole.target_tokens
    assert sum(whole.losses[-3:]) < sum(whole.losses[:3])

    cut = train(tiny_model_dir, data, tmp_path / "cut", s, progress=False, stop_after=4)  # "killed" at 4
    assert cut.steps == 4 and not (tmp_path / "cut" / "adapter").exists()
    resumed = train(tiny_model_dir, data, tmp_path / "cut", s, progress=False)
    assert resumed.steps == 8 and resumed.losses == pytest.approx(whole.losses, abs=1e-5)
    a = load_file(whole.adapter / "adapter_model.safetensors")
    b = load_file(resumed.adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


async def test_omoide_train_trains_the_latest_window(tiny_model_dir, tmp_path, capsys):
    from runtime.cli import main
    from runtime.events import TurnStatus
    from tests.conftest import write_config
    from tests.test_curation import stream

    await stream(tmp_path / "omoide.db", [("Ada", "my cat is called Miso", "Miso is a lovely name!", TurnStatus.COMPLETE),
                                          ("Bo", "my cat is called Tofu", "Tofu! Adorable.", TurnStatus.COMPLETE)])
    config = str(write_config(tmp_path, model={"id": str(tiny_model_dir)}, learning={"seq_len": 256, "rows": 2}))
    assert main(["--config", config, "dataset", "build"]) == 0
    assert main(["--config", config, "train", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "w0001: 3 steps" in out
    window = tmp_path / "training_logs" / "windows" / "w0001"
    assert (window / "run" / "adapter" / "adapter_config.json").is_file()
    assert main(["--config", config, "train", "--window", "w0009"]) == 1
    assert "no curated window" in capsys.readouterr().err


async def test_a_quiet_window_still_gets_its_minimum_of_steps(tiny_model_dir, tmp_path, capsys):
    """`min_steps`: the steps a window gets follow how much was said, so a quiet night's two facts
    would get one at a tenth of a pass; with `min_steps` it gets at least that many, and a window
    whose passes give more keeps its passes."""
    from runtime.cli import main
    from runtime.events import TurnStatus
    from tests.conftest import write_config
    from tests.test_curation import stream

    await stream(tmp_path / "omoide.db", [("Ada", "my cat is called Miso", "Miso is a lovely name!", TurnStatus.COMPLETE),
                                          ("Bo", "my cat is called Tofu", "Tofu! Adorable.", TurnStatus.COMPLETE)])
    config = str(write_config(tmp_path, model={"id": str(tiny_model_dir)},
                              learning={"seq_len": 256, "epochs": 0.1, "min_steps": 7, "rehearsal": 0}))
    assert main(["--config", config, "train"]) == 0
    assert "w0001: 7 steps" in capsys.readouterr().out

    data = tmp_path / "train.jsonl"
    write(data, examples())
    passes = SftSettings(epochs=2, rows=1, seq_len=128)
    steps = train(tiny_model_dir, data, tmp_path / "passes", passes, progress=False).steps
    assert steps > 2
    assert train(tiny_model_dir, data, tmp_path / "both", replace(passes, min_steps=2), progress=False).steps == steps


async def test_a_forgotten_viewer_is_retrained_out_of_the_live_adapter(tiny_model_dir, tmp_path, capsys):
    """`omoide memory forget` takes them out of the windows on disk; `omoide train --retrain` makes
    a new adapter from the base model on the live one's windows as they are now, and serves it."""
    from persona_model.adapters import AdapterRegistry
    from runtime.cli import main
    from runtime.events import TurnStatus
    from tests.conftest import write_config
    from tests.test_curation import stream

    await stream(tmp_path / "omoide.db", [("Ada", "my cat is called Miso", "Miso is a lovely name!", TurnStatus.COMPLETE),
                                          ("Bo", "my cat is called Tofu", "Tofu! Adorable.", TurnStatus.COMPLETE),
                                          ("Cy", "my cat is called Biscuit", "Biscuit!", TurnStatus.COMPLETE)])
    config = str(write_config(tmp_path, model={"id": str(tiny_model_dir)},
                              learning={"seq_len": 256, "rows": 2,  # a random model: the gate waves it through
                                        "gate": {"recall_margin": 1.0, "persona_margin": 99.0, "general_margin": 99.0}}))
    assert main(["--config", config, "train", "--steps", "2"]) == 0
    assert main(["--config", config, "memory", "forget", "Ada"]) == 0
    assert "omoide train --retrain" in capsys.readouterr().out
    assert main(["--config", config, "train", "--retrain", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "retraining v0001 from the base model" in out and "v0002 is active" in out
    registry = AdapterRegistry(tmp_path / "training_logs" / "adapters")
    v2 = registry.get("v0002")
    assert v2.parent is None and v2.window == "w0001" and registry.active == v2
    [data] = (tmp_path / "training_logs" / "windows" / "w0001").glob("retrain-1/train.jsonl")
    text = data.read_text()
    assert "Miso" not in text and "Ada" not in text and "Tofu" in text and "Biscuit" in text


async def test_merged_windows_serve_what_each_window_taught(tiny_model_dir, tmp_path, capsys):
    """`[learning] method = "ties"`: each window trains its own LoRA from the base model (nothing
    replayed) and the character is served all windows' adapters merged into one: it fits what the
    first window taught better than the second window's adapter alone, and the second's better
    than the first's alone."""
    from peft import PeftModel

    from persona_model.adapters import AdapterRegistry
    from persona_model.train.evaluate import reply_nll
    from runtime.cli import main
    from runtime.events import TurnStatus
    from tests.conftest import write_config
    from tests.test_curation import rows, stream

    config = str(write_config(tmp_path, model={"id": str(tiny_model_dir)},
                              learning={"seq_len": 256, "rows": 4, "method": "ties", "lr": 0.01, "rehearsal": 0,
                                        "gate": {"recall_margin": 1.0, "persona_margin": 99.0, "general_margin": 99.0}}))
    windows = tmp_path / "training_logs" / "windows"
    await stream(tmp_path / "omoide.db", [("Ada", "my cat is called Miso", "Miso is a lovely name!", TurnStatus.COMPLETE),
                                          ("Bo", "my cat is called Tofu", "Tofu! Adorable.", TurnStatus.COMPLETE)])
    assert main(["--config", config, "train", "--steps", "30"]) == 0
    await stream(tmp_path / "omoide.db", [("Cy", "I live in Lisbon", "Lisbon, how sunny!", TurnStatus.COMPLETE),
                                          ("Dee", "I live in Oslo", "Oslo is so pretty.", TurnStatus.COMPLETE)], start=2)
    assert main(["--config", config, "train", "--steps", "30"]) == 0
    out = capsys.readouterr().out
    assert "merged with 1 earlier window adapter(s) (TIES)" in out and "v0002 is active" in out
    assert not [r for r in rows(windows / "w0002" / "train.jsonl") if r["kind"] == "replay"]
    registry = AdapterRegistry(tmp_path / "training_logs" / "adapters")
    v1, v2 = registry.path("v0001"), registry.path("v0002")
    assert registry.get("v0002").parent == "v0001"
    assert json.loads((v2 / "adapter_config.json").read_text())["r"] == 32  # two rank-16 windows, nothing cut

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def nll(adapter, window: str) -> float:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter))
        return reply_nll(model.eval(), tok, rows(windows / window / "train.jsonl"))

    assert nll(v2, "w0001") < nll(v2 / "window", "w0001")
    assert nll(v2, "w0002") < nll(v1, "w0002")


def test_self_rehearsal_trains_the_models_own_everyday_answers_beside_the_window(tiny_model_dir, tmp_path):
    """Against forgetting: `rehearsal` examples per window example, each an everyday question in
    the window's system prompt answered by the model as it is now; generated once per run."""
    from persona_model.train.evaluate import generate_reply
    from persona_model.train.rehearsal import prompts, with_rehearsal

    data = tmp_path / "train.jsonl"
    write(data, examples(6))
    out = with_rehearsal(tiny_model_dir, None, data, tmp_path / "run" / "data.jsonl", share=0.5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[:6] == examples(6) and len(rows) == 9
    own = rows[6:]
    assert all(r["kind"] == "rehearsal" and r["messages"][0]["content"] == "You are Testa." for r in own)
    assert len({r["messages"][1]["content"] for r in own}) == 3 and all(
        r["messages"][1]["content"] in prompts() for r in own)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for r in own:  # what the model itself says to that question, greedily
        assert r["messages"][2]["content"] == generate_reply(model, tok, "You are Testa.", r["messages"][1]["content"],
                                                             48).strip()
    stamp = out.stat().st_mtime_ns
    assert with_rehearsal(tiny_model_dir, None, data, out, share=0.5) == out and out.stat().st_mtime_ns == stamp
    assert with_rehearsal(tiny_model_dir, None, data, tmp_path / "none.jsonl", share=0.0) == data


def test_the_loss_on_target_positions_only_is_the_models_own_loss(tiny_model_dir):
    from persona_model.train.sft import target_loss

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    encoded = [encode(ex, tok, 512) for ex in examples(4)]
    batch = collate(pack([len(x) for x, _ in encoded], 128), encoded, tok.pad_token_id)
    with torch.no_grad():
        assert float(target_loss(model, batch)) == pytest.approx(float(model(**batch).loss), rel=1e-5)
