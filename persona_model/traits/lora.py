"""A trait in the weights: a LoRA trained on trait-high replies, then applied with a scale
(docs/traits.md). Scale 1 is the adapter as trained, 0 the plain model, a negative scale pushes the
other way.

Two sources of replies, both to viewer messages that no measure scores (the steering prompts):
`written_examples`, replies written by hand for this project (data/<trait>-train.json), and
`distill_examples`, the model's own replies with the pole's instruction after her card, learned
with the card alone (the instruction moved into the weights; on the bundled 135M model its
"energetic" replies are rambles, and the LoRA learns those: docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from peft.tuners.lora import LoraLayer

from persona_model.train.evaluate import generate_reply
from persona_model.traits import Pole, TraitError


def distill_examples(model: Any, tokenizer: Any, system: str, pole: Pole, prompts: Sequence[str],
                     max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Training examples: each prompt answered (greedy) with the pole's instruction after
    `system`, kept with `system` alone."""
    out = []
    for prompt in prompts:
        reply = generate_reply(model, tokenizer, f"{system}\n\n{pole.instruction}", prompt, max_new_tokens).strip()
        if reply:
            out.append({"messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt},
                                     {"role": "assistant", "content": reply}], "kind": f"trait:{pole.label}"})
    return out


def written_examples(system: str, trait: str) -> list[dict[str, Any]]:
    """The trait's hand-written high replies as training examples after `system`."""
    source = resources.files("persona_model.traits") / "data" / f"{trait}-train.json"
    if not source.is_file():
        raise TraitError(f"no hand-written training replies for {trait!r} (data/{trait}-train.json)")
    rows = json.loads(source.read_text(encoding="utf-8"))["replies"]
    return [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt},
                          {"role": "assistant", "content": reply}], "kind": f"trait:{trait}"} for prompt, reply in rows]


def set_scale(model: Any, scale: float, adapter: str = "default") -> int:
    """Scale every LoRA layer of `adapter` (1: as trained); returns how many layers it touched."""
    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter in module.scaling:
            module.set_scale(adapter, scale)
            n += 1
    if not n:
        raise ValueError(f"no LoRA layers named {adapter!r} in this model")
    return n
