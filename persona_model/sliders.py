"""Sliders: a running character's traits, set live (docs/traits.md#sliders).

A slider is a trait's steering coefficient (`steering.Sliders` applies them): 0 leaves her as her
card and weights make her, positive leans to the trait's high pole, negative to its low one.

The settings live in one small JSON file (`{"energy": 2.0, "sass": -1.0}`) that the CLI, the
avatar channel and the companion page write and the running character reads between replies.
Light: no model library is imported here (`omoide persona set` answers at once).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from persona_model.traits import Trait, TraitError, bundled_traits, load_trait


class SliderError(ValueError):
    """A setting, a settings file or a trait list that cannot be used; the message names it."""


def traits_from(names: Sequence[str], base: Path | None = None, key: str = "sliders.traits") -> dict[str, Trait]:
    """Traits named in the configuration (`key`): bundled names (energy, warmth, sass) or trait JSON
    files (relative to `base`)."""
    bundled = bundled_traits()
    out: dict[str, Trait] = {}
    for name in names:
        if name in bundled:
            trait = bundled[name]
        elif name.endswith(".json"):
            path = Path(name).expanduser()
            try:
                trait = load_trait(path if path.is_absolute() or base is None else base / path)
            except TraitError as exc:
                raise SliderError(f"{key}: {exc}") from None
        else:
            raise SliderError(f"{key}: {name!r} is neither a bundled trait ({', '.join(bundled)})"
                              " nor a trait file (.json)")
        if trait.name in out:
            raise SliderError(f"{key}: {trait.name!r} is named twice")
        out[trait.name] = trait
    return out


def parse_settings(data: Any, known: Sequence[str], limit: float, where: str) -> dict[str, float]:
    """{trait: setting} from untrusted input: every name a known trait, every value a number within
    ±limit. Raises SliderError naming the first thing wrong."""
    if not isinstance(data, dict):
        raise SliderError(f"{where}: the settings must be an object of trait -> number, got {type(data).__name__}")
    out: dict[str, float] = {}
    for name, value in data.items():
        if name not in known:
            raise SliderError(f"{where}: no slider {name!r} (the sliders: {', '.join(known)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SliderError(f"{where}: {name} = {value!r:.40} is not a number")
        if abs(value) > limit:
            raise SliderError(f"{where}: {name} = {value:g} is beyond the limit of ±{limit:g} (sliders.limit)")
        out[name] = float(value)
    return out


def read_settings(path: Path, known: Sequence[str], limit: float) -> dict[str, float]:
    """The settings in `path` ({} when there is no file yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SliderError(f"{path}: cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SliderError(f"{path}: not JSON ({exc})") from None
    return parse_settings(data, known, limit, str(path))


def write_settings(path: Path, settings: Mapping[str, float]) -> None:
    """Replace the file at once (a reader never sees half of it); zero settings are left out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({k: v for k, v in settings.items() if v}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
