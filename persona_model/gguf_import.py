"""A GGUF file (the bundled SmolLM2-135M-Instruct) turned once into a transformers folder:
float32 safetensors, tokenizer and chat template.

transformers reads GGUF (`from_pretrained(folder, gguf_file=...)`, with the `gguf` package) by
dequantizing every tensor, about 20 s for the 135M on two cores; the folder it becomes loads in
about a second. The folder is named by the GGUF's SHA-256, so a new file is converted anew and the
same file never twice; it is written beside its final place and renamed into it, so a run killed
half-way leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SOURCE = "omoide-source.json"  # written last: the folder is complete


class GgufError(Exception):
    """The GGUF file is not what it should be, or transformers cannot read it."""


def converted_folder(models_dir: Path, name: str, sha256: str) -> Path:
    return models_dir / "converted" / f"{name}-{sha256[:12]}"


def converted(models_dir: Path, name: str, sha256: str) -> Path | None:
    """The finished folder for this GGUF, if it was converted before."""
    folder = converted_folder(models_dir, name, sha256)
    return folder if (folder / SOURCE).is_file() else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_once(gguf: Path, models_dir: Path, name: str, sha256: str,
                 say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """The transformers folder for `gguf`, converting it first if this is the first time.

    `sha256` is what the file must hash to (the wheel records it); a file that does not is
    refused before anything is written. transformers shows its own progress bars while it
    dequantizes and writes."""
    done = converted(models_dir, name, sha256)
    if done is not None:
        return done
    out = converted_folder(models_dir, name, sha256)
    if sha256_file(gguf) != sha256:
        raise GgufError(f"{gguf} does not match its recorded checksum: the file is damaged")
    say(f"converting {gguf.name} once into {out} (about 30 s; later starts load it in seconds)")
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{time.time_ns()}")
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - gguf and transformers raise many kinds
            raise GgufError(f"transformers cannot read {gguf} ({type(exc).__name__}: {exc})") from None
        # the weights are plain float32 now: drop the GGUF quantizer, which refuses to save
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE).write_text(json.dumps({"gguf": gguf.name, "sha256": sha256,
                                              "converted_s": round(time.monotonic() - started, 1)}))
        if out.exists() and converted(models_dir, name, sha256) is None:
            shutil.rmtree(out)  # left unfinished by hand
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same conversion first
            if converted(models_dir, name, sha256) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"converted in {time.monotonic() - started:.0f} s")
    return out
