"""`omoide persona sliders` and `omoide persona set`: the trait sliders' settings file, which a
running character reads between replies (docs/traits.md#sliders). Light: no model library."""

from __future__ import annotations

import argparse
from typing import Any

from persona_model.sliders import SliderError, parse_settings, read_settings, traits_from, write_settings
from runtime.cli_common import as_typed, config_from


def cmd_sliders(args: argparse.Namespace) -> int:
    """`omoide persona sliders`: each slider, what its ends mean and its setting."""
    config = config_from(args)
    traits = traits_from(config.sliders.traits, config.base_dir)
    path = config.path(config.sliders.file)
    now = read_settings(path, list(traits), config.sliders.limit)
    state = "" if config.sliders.enabled else " (sliders.enabled = false: a running character ignores them)"
    if config.model.backend != "local":
        state = " (model.backend = server: only a local model is steered)"
    print(f"sliders, -{config.sliders.limit:g} .. +{config.sliders.limit:g} ({path}){state}:")
    for name, t in traits.items():
        print(f"  {name:10} {now.get(name, 0.0):+5.1f}   {t.low.label} <-> {t.high.label}")
    print(as_typed("set one: omoide persona set energy=3 (a running character takes it before its next reply)"))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    """`omoide persona set NAME=VALUE ... [--reset]`."""
    config = config_from(args)
    traits = traits_from(config.sliders.traits, config.base_dir)
    path = config.path(config.sliders.file)
    limit = config.sliders.limit
    changes: dict[str, Any] = {}
    for item in args.settings:
        name, sep, value = item.partition("=")
        if not sep:
            raise SliderError(f"{item!r}: give NAME=VALUE, as in energy=3")
        try:
            changes[name.strip()] = float(value)
        except ValueError:
            raise SliderError(f"{item!r}: the setting must be a number, as in energy=3") from None
    checked = parse_settings(changes, list(traits), limit, "sliders")
    try:
        now = {} if args.reset else read_settings(path, list(traits), limit)
    except SliderError as exc:
        raise SliderError(as_typed(f"{exc}; `omoide persona set --reset` writes it anew")) from None
    write_settings(path, {**now, **checked})
    return cmd_sliders(args)
