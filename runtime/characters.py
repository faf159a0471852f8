"""Whose files are whose. Each character has a home: her memory database, her training windows,
her adapter registry and her sliders. Several characters on one stream ([[characters]] in
config.toml) each get the configuration of their own: her card, her voice, her home.

One character (no [[characters]]) keeps the files where they have always been (memory.database
and the learning folders beside it) while that database is hers: it is marked with her name at
her first start. A different card (another name) gets a home of her own beside it, so she does
not inherit another character's history, memories and adapters; switching back finds the first
one's as she left them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from memory.db import owner
from persona_model.card import CardError, load_card
from runtime.config import CharacterConfig, CharacterEntry, Config, ConfigError, TtsConfig, VtsConfig

log = logging.getLogger(__name__)
S = TypeVar("S", bound=BaseModel)

HOMES = "characters"  # the folder, beside memory.database, that holds the homes made by name


def slug(name: str) -> str:
    """A name as a folder name: "Evil Komorebi!" -> "evil-komorebi"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "character"


def at_home(config: Config, home: Path) -> Config:
    """The configuration with the character's own files in `home`."""
    return config.model_copy(update={
        "memory": config.memory.model_copy(update={"database": str(home / "omoide.db")}),
        "learning": config.learning.model_copy(update={"folder": str(home / "windows"),
                                                       "adapters": str(home / "adapters")}),
        "sliders": config.sliders.model_copy(update={"file": str(home / "sliders.json")}),
    })


def homed(config: Config, name: str) -> Config:
    """One character's configuration: her files where memory.database says while that database
    is hers (or nobody's yet), else in a home of her own beside it."""
    if config.chosen is not None or config.characters:
        return config  # a [[characters]] entry's home is its own
    database = config.path(config.memory.database)
    found = owner(database)
    if found is None or found == name:
        return config
    home = database.parent / HOMES / slug(name)
    log.info("%s holds %s's memories: %s's are kept in %s", database, found, name, home,
             extra={"character": name, "home": str(home)})
    return at_home(config, home)


def entry_config(config: Config, entry: CharacterEntry) -> Config:
    """The configuration of one [[characters]] entry: her card, her voice over [tts], her home."""
    base = config.path(config.memory.database).parent
    home = config.path(entry.home) if entry.home else base / HOMES / slug(entry.name)
    voice = entry.voice
    tts: dict[str, Any] = config.tts.model_dump()
    for engine in ("espeak", "piper", "coqui"):
        tts[engine] = {**tts[engine], **getattr(voice, engine)}
    if voice.engine is not None:
        tts["engine"] = voice.engine
    merged = _checked(TtsConfig, tts, entry, "voice")
    vts = config.vts  # hers (her own VTube Studio), or the one all share
    if entry.vts:
        vts = _checked(VtsConfig, {**config.vts.model_dump(), "token_file": str(home / "vts_token"), **entry.vts},
                       entry, "vts")
    return at_home(config, home).model_copy(update={
        "character": CharacterConfig(card=entry.card, greet=entry.greet), "tts": merged, "vts": vts,
        "persona": config.persona if entry.card else config.persona.model_copy(update={"name": entry.name}),
        "chosen": entry.name, "characters": []})


def _checked(section: type[S], values: dict[str, Any], entry: CharacterEntry, key: str) -> S:
    """A section of hers, checked: a bad value is one line naming her and the key."""
    try:
        return section.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"config error: characters {entry.name!r}: {key}.{where} = {err.get('input')!r}:"
                          f" {err['msg'].rstrip('.')}") from None


def cast_of(config: Config) -> list[Config]:
    """Every character's configuration: one per [[characters]] entry, or the config itself."""
    if not config.characters:
        return [config]
    names = [e.name.casefold() for e in config.characters]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"config error: characters: the name {twice[0]!r} is given twice (each needs her own)")
    cast = [entry_config(config, e) for e in config.characters]
    homes = [c.path(c.memory.database) for c in cast]
    shared = sorted({str(h.parent) for h in homes if homes.count(h) > 1})
    if shared:
        raise ConfigError(f"config error: characters: two characters have the home {shared[0]}"
                          " (each keeps her own memories and adapters there)")
    return cast


def chosen(config: Config, name: str | None) -> Config:
    """The configuration of the character `--character` names (the first one where none is named)."""
    cast = cast_of(config)
    if name is None:
        return cast[0]
    for c in cast:
        if c.chosen is not None and c.chosen.casefold() == name.casefold():
            return c
    known = ", ".join(c.chosen for c in cast if c.chosen) or "none: config.toml lists no [[characters]]"
    raise ConfigError(f"config error: --character {name!r} is not one of the characters ({known})")


def card_name(config: Config) -> str | None:
    """The character's name, from her card (None where the card cannot be read: starting her says why)."""
    if not config.character.card:
        return config.persona.name
    try:
        return load_card(config.path(config.character.card))[0].name
    except (CardError, OSError):
        return None


def for_command(config: Config, name: str | None) -> Config:
    """What a command (`omoide memory`, `train`, `adapters`...) works on: the named character's
    configuration, with her own files."""
    config = chosen(config, name)
    found = card_name(config)
    return homed(config, found) if found is not None else config
