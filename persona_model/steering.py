"""Activation steering: a trait as a direction in the model's residual stream, added at one decoder
layer while the character speaks (docs/traits.md).

The direction is the mean difference, over viewer messages that are never scored, of the last
prompt position's activation when the system prompt asks for the trait's high pole and when it
asks for the low one. Coefficient 1 adds that whole difference; a slider runs from about −3 to 3.
Added at every position, as llama.cpp's `--control-vector` does, so the file `export_gguf` writes
steers a llama.cpp server the same way (`--control-vector-scaled FILE COEFFICIENT`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from persona_model.sliders import parse_settings
from persona_model.traits import Trait, steering_prompts
from persona_model.traits.measure import prefixed

log = logging.getLogger(__name__)
GGUF_ARCH = "controlvector"  # what llama.cpp's control-vector loader reads
LAYER_SHARE = 0.4  # the sliders' default layer, as a share of the model's depth (12 of the bundled model's 30)


class SteeringError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SteeringVector:
    trait: str
    layer: int  # 0-based decoder layer whose output it is added to
    direction: np.ndarray  # (hidden,) float32: mean activation(high) − mean activation(low)


def decoder_layers(model: Any) -> Any:
    """The decoder blocks of a causal LM (through a peft wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        raise SteeringError(f"{type(base).__name__}: no decoder layers to steer")
    return layers


def compute(model: Any, tokenizer: Any, trait: Trait, prompts: Sequence[str], layer: int,
            system: str = "") -> SteeringVector:
    """The trait's direction at `layer`, from the two poles' instructions after `system` (the
    character's own prompt, so the difference is the one her prompt would make). Compute it with
    no steering on: the activations are read as the layer writes them."""
    n = len(decoder_layers(model))
    if not 0 < layer < n - 1:
        raise SteeringError(f"layer {layer} is outside 1..{n - 2} (the model has {n} decoder layers)")
    if not prompts:
        raise SteeringError("no prompts to compute a steering vector from")

    def row(pole: str, prompt: str) -> list[int]:
        messages = [{"role": "system", "content": f"{system}\n\n{pole}" if system else pole},
                    {"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows = [row(trait.high.instruction, p) for p in prompts] + [row(trait.low.instruction, p) for p in prompts]
    last: list[torch.Tensor] = []
    for c in prefixed(model, rows, hidden=True):
        states = c.out.hidden_states[layer + 1]  # [0] is the embeddings
        last += [states[i, len(r) - c.shared - 1].float().cpu() for i, r in enumerate(c.rows)]
    diff = torch.stack(last[:len(prompts)]).mean(dim=0) - torch.stack(last[len(prompts):]).mean(dim=0)
    return SteeringVector(trait.name, layer, diff.numpy().astype(np.float32))


class Steerer:
    """Holds each trait's vector and coefficient and adds their sum to the decoder layers' outputs.
    A change takes effect at the next forward pass; the runtime changes it between replies."""

    def __init__(self, model: Any) -> None:
        self._layers = decoder_layers(model)
        self._param = next(model.parameters())
        self._hidden = int(model.config.hidden_size)
        self._lock = threading.Lock()
        self._vectors: dict[str, SteeringVector] = {}
        self._coefficients: dict[str, float] = {}
        self._added: dict[int, torch.Tensor] = {}
        self._hooks: dict[int, Any] = {}

    def add(self, vector: SteeringVector) -> None:
        if not 0 <= vector.layer < len(self._layers):
            raise SteeringError(f"{vector.trait}: layer {vector.layer} is not in this model")
        if vector.direction.shape != (self._hidden,):
            raise SteeringError(f"{vector.trait}: a direction of shape {vector.direction.shape} does not fit"
                                f" this model's hidden size {self._hidden}")
        with self._lock:
            self._vectors[vector.trait] = vector
            self._coefficients.setdefault(vector.trait, 0.0)
            self._rebuild()

    @property
    def traits(self) -> list[str]:
        return list(self._vectors)

    def coefficients(self) -> dict[str, float]:
        return dict(self._coefficients)

    def set(self, trait: str, coefficient: float) -> None:
        if trait not in self._vectors:
            raise SteeringError(f"no steering vector for {trait!r} (have: {', '.join(self._vectors) or 'none'})")
        with self._lock:
            self._coefficients[trait] = float(coefficient)
            self._rebuild()

    def _rebuild(self) -> None:
        added: dict[int, torch.Tensor] = {}
        for name, vec in self._vectors.items():
            c = self._coefficients.get(name, 0.0)
            if c:
                delta = torch.from_numpy(vec.direction).to(self._param.device, self._param.dtype) * c
                added[vec.layer] = added[vec.layer] + delta if vec.layer in added else delta
        self._added = added
        for layer in set(self._hooks) - set(added):
            self._hooks.pop(layer).remove()
        for layer in set(added) - set(self._hooks):
            self._hooks[layer] = self._layers[layer].register_forward_hook(self._hook(layer))

    def _hook(self, layer: int) -> Any:
        def add(_module: Any, _inputs: Any, output: Any) -> Any:
            delta = self._added.get(layer)
            if delta is None:
                return output
            if isinstance(output, tuple):
                return (output[0] + delta, *output[1:])
            return output + delta

        return add

    def close(self) -> None:
        """Every coefficient back to 0 and the hooks removed: the model as it was (vectors kept)."""
        with self._lock:
            self._coefficients = dict.fromkeys(self._coefficients, 0.0)
            self._rebuild()


def export_gguf(vectors: Iterable[tuple[SteeringVector, float]], path: Path | str, model_hint: str) -> Path:
    """A llama.cpp control-vector file: each vector times its coefficient, summed per layer
    (`direction.N` is added to the output of 0-based decoder layer N, as here)."""
    per_layer: dict[int, np.ndarray] = {}
    for vec, coefficient in vectors:
        if vec.layer < 1:
            raise SteeringError("llama.cpp's control vectors start at layer 1")
        scaled = vec.direction.astype(np.float32) * np.float32(coefficient)
        per_layer[vec.layer] = per_layer[vec.layer] + scaled if vec.layer in per_layer else scaled
    if not per_layer:
        raise SteeringError("no vectors to export")
    path = Path(path)
    w = gguf.GGUFWriter(str(path), GGUF_ARCH)
    w.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
    w.add_uint32(f"{GGUF_ARCH}.layer_count", len(per_layer))
    for layer in sorted(per_layer):
        w.add_tensor(f"direction.{layer}", per_layer[layer])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def read_gguf(path: Path | str) -> dict[int, np.ndarray]:
    """The per-layer directions of a control-vector file (ours or repeng's)."""
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise SteeringError(f"{path}: not a GGUF file ({e})") from None
    arch = reader.fields.get("general.architecture")
    if arch is None or bytes(arch.parts[arch.data[0]]).decode() != GGUF_ARCH:
        raise SteeringError(f"{path}: not a control-vector GGUF (general.architecture is not {GGUF_ARCH!r})")
    out = {}
    for t in reader.tensors:
        if t.name.startswith("direction."):
            out[int(t.name.split(".", 1)[1])] = np.array(t.data, dtype=np.float32).reshape(-1)
    return out


def default_layer(model: Any) -> int:
    n = len(decoder_layers(model))
    if n < 3:
        raise SteeringError(f"the model has {n} decoder layers: too few to steer (sliders need 3 or more)")
    return min(max(1, round(n * LAYER_SHARE)), n - 2)


class Sliders:
    """The steering vectors behind the sliders and the Steerer that adds them to the model.

    `apply` is blocking (the first time a trait moves on a model and card, its vector is computed:
    about 8 s for the bundled model on 2 CPU cores; then read from its file in milliseconds) and must
    run when no generation does: the local backend runs it on its generation thread, between replies."""

    def __init__(self, model: Any, tokenizer: Any, traits: Mapping[str, Trait], system: str, *,
                 model_name: str, layer: int = 0, cache: Path | None = None, limit: float = 8.0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.traits = dict(traits)
        self.system = system
        self.cache = cache
        self.limit = limit
        self.model_name = model_name
        self.steerer = Steerer(model)
        n = len(decoder_layers(model))
        self._lock = threading.Lock()
        self.layer = layer or default_layer(model)
        if not 0 < self.layer < n - 1:
            raise SteeringError(f"sliders.layer = {self.layer} is outside 1..{n - 2} (the model has {n} decoder layers)")

    @property
    def names(self) -> list[str]:
        return list(self.traits)

    def settings(self) -> dict[str, float]:
        """The settings in effect (every slider, 0 for those at rest)."""
        now = self.steerer.coefficients()
        return {name: now.get(name, 0.0) for name in self.traits}

    def check(self, settings: Mapping[str, Any], where: str = "sliders") -> dict[str, float]:
        """The settings, or SliderError naming the first one that cannot be used."""
        return parse_settings(dict(settings), self.names, self.limit, where)

    def apply(self, settings: Mapping[str, float]) -> dict[str, float]:
        """Set every slider (those not named go back to 0); returns the settings in effect."""
        wanted = self.check(settings)
        with self._lock:
            missing = [n for n, v in wanted.items() if v and n not in self.steerer.traits]
            if missing:
                self.steerer.close()  # vectors are read from the model as it is, unsteered
                for name in missing:
                    self.steerer.add(self._vector(name))
            for name in self.steerer.traits:
                self.steerer.set(name, wanted.get(name, 0.0))
        return self.settings()

    def vector(self, name: str) -> tuple[SteeringVector, Path | None]:
        """A slider's vector (computed, or read from its file) and the file that keeps it."""
        with self._lock:
            return self._vector(name), self._cache_path(self.traits[name])

    def _vector(self, name: str) -> SteeringVector:
        trait = self.traits[name]
        path = self._cache_path(trait)
        if path is not None and path.is_file():
            try:
                layers = read_gguf(path)
                if list(layers) == [self.layer]:
                    return SteeringVector(name, self.layer, layers[self.layer])
            except SteeringError as exc:
                log.warning("a steering vector file is unreadable: computing it again", extra={"error": str(exc)})
        vector = compute(self.model, self.tokenizer, trait, steering_prompts(), self.layer, self.system)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                export_gguf([(vector, 1.0)], path, self.model_name)
            except OSError as exc:
                log.warning("the steering vector could not be kept", extra={"path": str(path), "error": str(exc)})
        return vector

    def _cache_path(self, trait: Trait) -> Path | None:
        """One file per model, card, layer and trait definition: a change to any computes anew."""
        if self.cache is None:
            return None
        key = json.dumps([self.model_name, self.layer, self.system, repr(trait), steering_prompts()])
        return self.cache / f"{trait.name}-L{self.layer}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.gguf"
