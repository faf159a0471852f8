"""The commands that start the character: `omoide run`, `chat`, `companion`, `play`, and
`omoide vts hotkeys`, which talks to VTube Studio as she would."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from websockets.exceptions import InvalidHandshake, InvalidURI

from persona_model.hub import ModelNotFound
from plugins.avatar_vts import VtsError
from runtime import app, heap, learning, parts
from runtime.characters import cast_of, for_command
from runtime.cli_common import EXIT_CONFIG, EXIT_MODEL, Errors, config_from, setup_logs

ERRORS: Errors = ((ModelNotFound, EXIT_MODEL, "cannot start: "),)


def cmd_run(args: argparse.Namespace) -> int:
    """`omoide run`, `omoide chat` (args.chat) and `omoide companion` (args.companion)."""
    chat, companion = getattr(args, "chat", False), getattr(args, "companion", False)
    heap.cap_malloc_arenas()  # flat memory over a long stream
    config = config_from(args, everyone=True)
    setup_logs(config, chatting=chat or companion or config.chat.console.enabled)
    try:
        # each character's own training schedule (her windows, her adapters)
        schedules = [s for c in cast_of(config) if (s := learning.schedule_from(for_command(c, None))) is not None]
        if companion:
            asyncio.run(app.companion(config))
            return 0
        asyncio.run(app.run(config, on_ready=app.say_overlay, console=True if chat else None,
                            exit_when_sources_end=chat, background=[s.run for s in schedules]))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    config = config_from(args)
    config = config.model_copy(update={"game": config.game.model_copy(update={"enabled": True})})
    setup_logs(config, chatting=False)
    winner = asyncio.run(app.play(config, seed=args.seed, opponent=args.opponent))
    name = parts.persona_from(config)[0].name
    print({"X": f"{name} won", "O": "the opponent won", "draw": "a draw"}[winner])
    return 0


def cmd_vts_hotkeys(args: argparse.Namespace) -> int:
    """List the current VTube Studio model's hotkeys (asks VTube Studio for a token the first time)."""
    config = config_from(args)

    async def listing() -> dict[str, Any]:
        client = parts.vts_client_from(config)
        try:
            await client.connect()
            return await client.request("HotkeysInCurrentModel")
        finally:
            await client.close()

    try:
        data = asyncio.run(listing())
    except (OSError, ConnectionError, TimeoutError, InvalidHandshake, InvalidURI, VtsError) as exc:
        print(f"vts: cannot talk to VTube Studio at {config.vts.url} ({exc}); is its API started"
              " (Settings > Start API) and the plugin allowed?", file=sys.stderr)
        return EXIT_CONFIG
    if not data.get("modelLoaded"):
        print("(no model loaded in VTube Studio)")
        return 0
    print(f"hotkeys of {data.get('modelName')!r} (map tags to them with [vts] hotkeys = {{ happy = \"NAME\" }}):")
    for hotkey in data.get("availableHotkeys", []):
        print(f"  {hotkey.get('name', ''):32} {hotkey.get('hotkeyID', ''):40} {hotkey.get('type', '')}")
    return 0
