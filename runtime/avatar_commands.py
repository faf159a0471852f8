"""What the avatar channel's clients may ask of the character (docs/protocols/avatar.md, control
commands): the companion page's `say` and `control`, an operator's `review`, the consent to train
viewers' facts (`memory_pending`, `memory_approve`, `memory_reject`), `game_shutdown`, and with several characters `collab` (who answers next)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memory import admin as memory_admin
from memory import review as memory_review
from plugins.avatar_ws import Command
from plugins.game_neuro import GameServer
from runtime.director import Director
from runtime.events import TYPED, Control, InputEvent, InputKind, Priority
from runtime.ports import Clock


def channel_commands(submit: Callable[[InputEvent], object], clock: Clock, author: str, database: Path,
                     games: GameServer | None) -> dict[str, Command]:
    """Every command the channel takes, by name."""
    commands = {"review": review_command(database), **consent_commands(database), **page_commands(submit, clock, author)}
    if games is not None:
        commands["game_shutdown"] = shutdown_command(games)
    return commands


def page_commands(submit: Callable[[InputEvent], object], clock: Clock, author: str) -> dict[str, Command]:
    """The overlay page's companion controls, handed to `submit` (the director's): `say` (a typed
    line, as in the terminal) and `control` (mute, unmute, talk_start, talk_stop, interrupt)."""

    async def say(message: dict[str, Any]) -> dict[str, Any]:
        text = message.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError('needs "text", a non-empty string')
        event = InputEvent(InputKind.CHAT, text.strip()[:2000], "overlay", clock.now(), author, Priority.NORMAL,
                           meta={"event": TYPED})
        submit(event)
        return {"input_id": event.id}

    async def control(message: dict[str, Any]) -> dict[str, Any]:
        command = message.get("command")
        allowed = {str(c) for c in Control} - {str(Control.STOP)}
        if command not in allowed:
            raise ValueError(f'"command" must be one of {", ".join(sorted(allowed))}')
        submit(InputEvent(InputKind.CONTROL, str(command), "overlay", clock.now(), author, Priority.CRITICAL))
        return {"command": command}

    return {"say": say, "control": control}


def shutdown_command(games: GameServer) -> Command:
    """The avatar channel's `game_shutdown`: ask a game to save and quit (the Neuro API's proposed
    shutdown/graceful, or shutdown/immediate with "immediate": true)."""

    async def shutdown(message: dict[str, Any]) -> dict[str, Any]:
        game, immediate, cancel = message.get("game"), message.get("immediate", False), message.get("cancel", False)
        if not isinstance(game, str) or not isinstance(immediate, bool) or not isinstance(cancel, bool):
            raise ValueError('needs "game" (a string); "immediate" and "cancel" are true or false')
        if not await games.shutdown(game, graceful=not immediate, wants=not cancel):
            raise ValueError(f"no game {game!r} is connected")
        return {"game": game, "immediate": immediate, "cancel": cancel}

    return shutdown


def review_command(database: Path) -> Command:
    """The avatar channel's `review`: an operator marks a reply good, bad or corrected, as with
    `omoide logs review` (docs/protocols/avatar.md)."""

    async def review(message: dict[str, Any]) -> dict[str, Any]:
        turn, verdict, text = message.get("turn_id"), message.get("verdict"), message.get("text")
        if not isinstance(turn, str) or not isinstance(verdict, str) or not isinstance(text, str | None):
            raise ValueError('needs "turn_id" and "verdict" as strings (and "text", a string, with "corrected")')
        turn_id = await asyncio.to_thread(memory_review.review, database, turn, verdict, text)
        return {"turn_id": turn_id, "verdict": verdict}

    return review


def consent_commands(database: Path) -> dict[str, Command]:
    """The operator's word on viewers' facts, as `omoide memory pending|approve|reject`."""

    async def pending(message: dict[str, Any]) -> dict[str, Any]:
        rows = await asyncio.to_thread(memory_admin.pending, database)
        return {"facts": [{"id": mid, "viewer": viewer, "text": text} for mid, _, viewer, _, _, _, text in rows]}

    def decide(verdict: str) -> Command:
        async def command(message: dict[str, Any]) -> dict[str, Any]:
            ids = message.get("ids")
            if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
                raise ValueError('needs "ids": a list of memory ids (from memory_pending)')
            changed, refused = await asyncio.to_thread(memory_admin.consent, database, ids, verdict)
            return {"changed": changed, "refused": refused}

        return command

    return {"memory_pending": pending, "memory_approve": decide("approved"), "memory_reject": decide("rejected")}


def collab_command(director: Director) -> Command:
    """The avatar channel's `collab`, with several characters: `next` (who answers the next
    input), `mute` / `unmute` (a muted one is not picked; the others answer in her place), and
    `end_banter` (chat is answered next). Answers with who is muted and the banter left."""

    async def collab(message: dict[str, Any]) -> dict[str, Any]:
        troupe = director.troupe
        for key in ("next", "mute", "unmute"):
            name = message.get(key)
            if name is None:
                continue
            if not isinstance(name, str):
                raise ValueError(f'"{key}" must be a character\'s name')
            try:
                member = troupe.member(name)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None  # names the characters there are
            if key == "next":
                troupe.picked = member
            else:
                member.muted = key == "mute"
        if message.get("end_banter") is True:
            director.end_banter()
        return {"muted": [m.name for m in troupe.members if m.muted], "next": troupe.picked.name if troupe.picked else None,
                "banter_left": troupe.banter_left}

    return collab
