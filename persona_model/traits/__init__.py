"""Personality traits as behaviour (docs/traits.md): each trait is a set of stream situations, each
with a trait-high and a trait-low reply of about the same length, written for this project.

Self-reports (questionnaire items scored by option log-probabilities) measure nothing at the size
of the bundled model: it answers the same whatever the item says. What it does is reply, so the
traits are measured on replies: `measure.likelihood_score` (which of the two replies the character
finds likelier) and `classify.ReplyClassifier` (what its own generated replies sound like).

A trait file is JSON: `trait`, `definition`, `high` and `low` (each a `label` and an
`instruction`: a sentence that asks for that pole, used to validate the measure and to compute
steering vectors) and `situations`, a list of `[situation, high reply, low reply]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

MIN_SITUATIONS = 40  # below this a trait score moves with one reply's wording


class TraitError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Situation:
    prompt: str  # what the viewer said or what happened, as the character's user turn
    high: str
    low: str


@dataclass(frozen=True, slots=True)
class Pole:
    label: str
    instruction: str


@dataclass(frozen=True, slots=True)
class Trait:
    name: str
    definition: str
    high: Pole
    low: Pole
    situations: tuple[Situation, ...]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TraitError(f"{where} must be a non-empty string, got {value!r:.60}")
    return value.strip()


def _pole(value: Any, where: str) -> Pole:
    if not isinstance(value, dict):
        raise TraitError(f"{where} must be an object with 'label' and 'instruction'")
    return Pole(_text(value.get("label"), f"{where}.label"), _text(value.get("instruction"), f"{where}.instruction"))


def parse_trait(data: Any, where: str = "trait") -> Trait:
    if not isinstance(data, dict):
        raise TraitError(f"{where}: a trait file is a JSON object")
    rows = data.get("situations")
    if not isinstance(rows, list):
        raise TraitError(f"{where}: 'situations' must be a list of [situation, high reply, low reply]")
    situations = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 3:
            raise TraitError(f"{where}: situations[{i}] must be [situation, high reply, low reply]")
        situations.append(Situation(*(_text(v, f"{where}: situations[{i}][{j}]") for j, v in enumerate(row))))
    if len(situations) < MIN_SITUATIONS:
        raise TraitError(f"{where}: {len(situations)} situations; a trait needs at least {MIN_SITUATIONS}")
    return Trait(_text(data.get("trait"), f"{where}: trait"), _text(data.get("definition"), f"{where}: definition"),
                 _pole(data.get("high"), f"{where}: high"), _pole(data.get("low"), f"{where}: low"),
                 tuple(situations))


def load_trait(path: Path | str) -> Trait:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TraitError(f"{path}: not a readable JSON trait file ({e})") from None
    return parse_trait(data, str(path))


BUNDLED = ("energy", "warmth", "sass")


def bundled_traits() -> dict[str, Trait]:
    """The traits docs/traits.md defines, in that order."""
    folder = resources.files(__package__) / "data"
    return {name: parse_trait(json.loads((folder / f"{name}.json").read_text(encoding="utf-8")), f"{name}.json")
            for name in BUNDLED}


def steering_prompts() -> list[str]:
    """Viewer messages to compute steering vectors from: never a trait's scored situation."""
    text = (resources.files(__package__) / "data" / "steering_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
