"""The trait sliders of a running character (docs/traits.md#sliders): built from [sliders] on the
local model, kept in step with their file (which `omoide persona set` writes, runtime/cli_persona.py),
and moved by the avatar channel's `sliders_set` and the companion page.

Like app.py, this is wiring (layer 3): it reads the configuration and picks the concrete pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from persona_model.local import LocalPersonaModel
from persona_model.prompt import system_text
from persona_model.sliders import SliderError, parse_settings, read_settings, traits_from, write_settings
from persona_model.steering import Sliders, SteeringError
from persona_model.traits import Trait
from persona_model.traits.measure import likelihood_score
from runtime.cli_common import config_from
from runtime.config import Config
from runtime.errors import StartupError
from runtime.events import Persona
from runtime.learning import card_system, gate_traits
from runtime.models import backends, model_from
from runtime.parts import persona_from
from runtime.ports import Clock, PersonaModel

log = logging.getLogger(__name__)
WATCH_S = 0.5  # how often a running character looks at the settings file


def slider_traits(config: Config) -> dict[str, Trait]:
    try:
        return traits_from(config.sliders.traits, config.base_dir)
    except SliderError as exc:
        raise StartupError(str(exc)) from None


class LiveSliders:
    """The sliders of the models a character runs (the local model; a server's local stand-in),
    their settings file, and the watch that hands a changed file to them."""

    def __init__(self, path: Path, traits: Mapping[str, Trait], limit: float,
                 models: list[LocalPersonaModel]) -> None:
        self.path = path
        self.traits = dict(traits)
        self.limit = limit
        self.models = models  # each with its sliders attached
        self._stamp: tuple[int, int] | None = None
        self.wanted: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        return read_settings(self.path, list(self.traits), self.limit)

    def settings(self) -> dict[str, float]:
        """Every slider and the setting asked for last (the next reply is generated with it)."""
        return {name: self.wanted.get(name, 0.0) for name in self.traits}

    def set(self, changes: Mapping[str, Any], reset: bool = False) -> dict[str, float]:
        """Change some sliders (the rest keep theirs; `reset`: the rest go to 0), keep the settings
        in the file, and hand them to the models for their next reply. SliderError for a bad one."""
        wanted = {**({} if reset else self.wanted), **self._check(changes)}
        write_settings(self.path, wanted)
        self._stamp = self._stat()
        self._give(wanted)
        return self.settings()

    def _check(self, changes: Mapping[str, Any]) -> dict[str, float]:
        return parse_settings(dict(changes), list(self.traits), self.limit, "sliders")

    def _give(self, wanted: dict[str, float]) -> None:
        for model in self.models:
            model.set_traits(wanted)
        self.wanted = {k: v for k, v in wanted.items() if v}

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def load(self) -> None:
        """Take the file's settings now (at start, and when it changed); a bad file is reported
        and the settings before are kept."""
        self._stamp = self._stat()
        try:
            wanted = self.read()
        except SliderError as exc:
            log.warning("the sliders file cannot be used: the settings before are kept", extra={"error": str(exc)})
            return
        if wanted != self.wanted:
            log.info("sliders set", extra={"settings": wanted or "all at 0"})
            self._give(wanted)

    async def aclose(self) -> None:
        """Every slider back to 0 on the models (the character is done; they may serve another)."""
        for model in self.models:
            model.set_traits({})
            await asyncio.to_thread(model.join)

    async def watch(self, clock: Clock, every_s: float = WATCH_S) -> None:
        """Beside the turns: a changed settings file reaches the models before their next reply."""
        while True:
            await clock.sleep(every_s)
            if self._stat() != self._stamp:
                self.load()


def slider_system(persona: Persona) -> str:
    """The system prompt the vectors are computed under: her card's, as every turn renders it."""
    return system_text(persona, "Chat")


def sliders_on(config: Config, model: LocalPersonaModel, traits: Mapping[str, Trait], system: str) -> Sliders:
    s = config.sliders
    return Sliders(model.model, model.tokenizer, traits, system, model_name=model.name, layer=s.layer,
                   cache=config.path(s.cache), limit=s.limit)


def live_sliders(config: Config, model: PersonaModel, system: str) -> LiveSliders | None:
    """The sliders on each local model behind `model`, with the file's settings given to them;
    None when [sliders] is off or no model can be steered (said in the log)."""
    s = config.sliders
    if not s.enabled:
        return None
    traits = slider_traits(config)
    local = [m for m in backends(model) if isinstance(m, LocalPersonaModel)]
    if not local:
        log.info("sliders steer the local model only: model.backend = server takes none (docs/traits.md#sliders)")
        return None
    attached = []
    for m in local:
        try:
            m.attach_sliders(sliders_on(config, m, traits, system))
        except SteeringError as exc:
            log.warning("no sliders for this model", extra={"model": m.name, "reason": str(exc)})
            continue
        attached.append(m)
    if not attached:
        return None
    live = LiveSliders(config.path(s.file), traits, s.limit, attached)
    live.load()
    return live


# ---- the avatar channel ----------------------------------------------------------------------------
def slider_commands(live: LiveSliders) -> dict[str, Any]:
    """`sliders` (each slider, its poles and setting) and `sliders_set` ({"values": {"energy": 3},
    "reset": false}), for the companion page and an operator's tools (docs/protocols/avatar.md)."""

    async def sliders(message: dict[str, Any]) -> dict[str, Any]:
        return describe(live)

    async def sliders_set(message: dict[str, Any]) -> dict[str, Any]:
        values, reset = message.get("values"), message.get("reset", False)
        if not isinstance(values, dict) or not isinstance(reset, bool):
            raise ValueError('needs "values": an object of slider -> number (and "reset", true or false)')
        try:
            await asyncio.to_thread(live.set, values, reset)
        except SliderError as exc:
            raise ValueError(str(exc)) from None
        return describe(live)

    return {"sliders": sliders, "sliders_set": sliders_set}


def describe(live: LiveSliders) -> dict[str, Any]:
    now = live.settings()
    return {"limit": live.limit, "sliders": [
        {"name": name, "value": now[name], "high": t.high.label, "low": t.low.label, "definition": t.definition}
        for name, t in live.traits.items()]}


def cmd_vectors(args: argparse.Namespace) -> int:
    """`omoide persona vectors`: each slider's steering vector for the configured model and card,
    computed now (or found), as llama.cpp control-vector files: before a stream, so the first move
    of a slider does not wait for it, and for a llama.cpp server that runs the same model."""
    config = config_from(args)
    persona, _ = persona_from(config)
    model = model_from(config)
    sliders = sliders_on(config, model, slider_traits(config), slider_system(persona))
    for name in sliders.names:
        vector, path = sliders.vector(name)
        print(f"{name:10} layer {vector.layer}  {path}")
    print("llama.cpp: llama-server -m MODEL.gguf --control-vector-scaled FILE SETTING (one setting for every"
          " request; the vectors fit only the model they were computed on)")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    """`omoide persona measure`: her trait scores as she runs (the configured model, the live
    adapter, the card), the numbers the drift gate's `trait_targets` take."""
    config = config_from(args)
    traits = gate_traits(config)
    model = model_from(config)
    system = card_system(config)
    print(f"trait scores of {model.name}{f' + {model.adapter}' if model.adapter else ''} under the card"
          " (nats/token, high reply minus low; docs/traits.md):")
    for trait in traits:
        print(f"  {likelihood_score(model.model, model.tokenizer, system, trait)}")
    print(f"the drift gate ([learning.gate]) keeps each within {config.learning.gate.trait_margin:g} of"
          " trait_targets (default: the live adapter's own)")
    return 0
