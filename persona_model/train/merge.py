"""Merging per-window adapters (`[learning] method = "ties"` or `"dare"`): every window trains a
fresh LoRA from the base model on its own examples, and the character is served the windows'
adapters merged into one LoRA by peft's `add_weighted_adapter` (TIES or DARE-TIES on the weight
deltas, then an SVD back to a LoRA). Each merged version keeps its own window's adapter in
`window/`, so the next merge reads the lineage without copies. Measured against replay and OSF
in docs/benchmarks.md ("A month of nights")."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

Merge = Literal["ties", "dare"]
OWN = "window"  # the subfolder of a merged version that holds its window's own adapter
DENSITY = 0.5  # the share of each delta TIES keeps (by magnitude) and DARE keeps (at random, rescaled)
MAX_RANK = 64  # the merged LoRA's rank: the parts' ranks summed, at most this


def merged_model(base: Path | str, parts: Sequence[Path], how: Merge, seed: int = 0) -> Any:
    """The base model with `parts` merged into one adapter named "default" (a PeftModel)."""
    torch.manual_seed(seed)  # DARE drops at random
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                      str(parts[0]), adapter_name="p0")
    for i, part in enumerate(parts[1:], 1):
        model.load_adapter(str(part), adapter_name=f"p{i}")
    names = [f"p{i}" for i in range(len(parts))]
    rank = min(MAX_RANK, sum(getattr(model.peft_config[n], "r", 0) for n in names))  # LoRA parts: their ranks
    model.add_weighted_adapter(names, [1.0] * len(parts), "default",
                               combination_type="ties_svd" if how == "ties" else "dare_ties_svd",
                               svd_rank=rank, density=DENSITY, svd_full_matrices=False)
    model.set_adapter("default")
    for name in names:
        model.delete_adapter(name)
    return model


def merge(base: Path | str, parts: Sequence[Path], how: Merge, out: Path, seed: int = 0) -> Path:
    """Merge `parts` (the lineage's window adapters, oldest first, this window's last) into one
    LoRA in `out`, with this window's own adapter kept in `out/window/`."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if len(parts) == 1:
        shutil.copytree(parts[0], tmp)
    else:
        merged_model(base, parts, how, seed).save_pretrained(tmp)
    shutil.copytree(parts[-1], tmp / OWN, ignore=shutil.ignore_patterns(OWN, "checkpoint"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def lineage_parts(version_paths: Sequence[Path]) -> list[Path]:
    """The window adapters a new merge starts from: `version_paths` from the live version back
    through its parents (newest first). A version with its own window's adapter adds that and the
    walk goes on; one without (trained by another method, or retrained) stands whole for itself
    and everything before it."""
    parts: list[Path] = []
    for path in version_paths:
        if (path / OWN / "adapter_config.json").is_file():
            parts.append(path / OWN)
        else:
            parts.append(path)
            break
    return parts[::-1]
