"""Acting in a game: a force turn asks the persona model for one action as schema-constrained JSON
(so the action's data always validates against the game's schema), sends it, and tries again with
the game's answer when the game refuses it (`success: false`), up to `retries` times.

The model sees the game's recent context, the force's state and query, and each action's name,
description and schema; it answers `{"action": "<name>", "data": {...}}`, constrained to exactly
the registered actions and their schemas.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from runtime.events import ActionAttempt, ActionResult, ActionSpec, InputEvent, PromptContext
from runtime.ports import Games, PersonaModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class GameSettings:
    retries: int = 3  # tries after the game refuses an action, before giving the force up
    speak: bool = True  # say a line in character about the action taken
    max_json_tokens: int = 256
    context_lines: int = 10  # the game's recent context messages in the prompt


@dataclass(frozen=True, slots=True)
class Outcome:
    """What acting on a force came to: the actions tried (for the log) and the last result."""

    tried: tuple[ActionAttempt, ...]
    result: ActionResult | None  # None: nothing could be done (no actions left)

    @property
    def acted(self) -> bool:
        return self.result is not None and self.result.success

    def summary(self) -> str:
        """A line for the spoken reply's prompt: what the character just did."""
        if not self.tried:
            return "(There was nothing you could do in the game.)"
        last = self.tried[-1]
        if last["name"] is None:
            return "(You could not decide what to do in the game.)"
        data = f" with {last['data']}" if last.get("data") else ""
        said = f" The game said: {last['message']}" if last.get("message") else ""
        verdict = "" if last["success"] else " The game refused it."
        return f"(You chose to {last['name']}{data}.{verdict}{said} Say one short line about it.)"


def action_schema(specs: Sequence[ActionSpec]) -> dict[str, Any]:
    """The schema of the model's answer: one of the actions, with that action's data."""
    branches = []
    for spec in specs:
        props: dict[str, Any] = {"action": {"const": spec.name}}
        required = ["action"]
        if spec.schema:
            props["data"] = spec.schema
            required.append("data")
        branches.append({"type": "object", "properties": props, "required": required,
                         "additionalProperties": False})
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def force_text(event: InputEvent, specs: Sequence[ActionSpec], context: Sequence[str],
               refusals: Sequence[str] = ()) -> str:
    """What the model reads for a force: the game, what happened, the question, the actions."""
    meta = event.meta
    lines = [f"You are playing the game {meta.get('game', event.author)!r}."]
    if context:
        lines += ["What the game told you lately:", *(f"- {c}" for c in context)]
    if meta.get("state"):
        lines += ["The game's state now:", str(meta["state"])]
    lines += [str(meta.get("query") or event.text), "Actions you can take:"]
    for spec in specs:
        schema = f" Its data: {json.dumps(spec.schema, separators=(',', ':'))}" if spec.schema else ""
        lines.append(f"- {spec.name}: {spec.description}{schema}")
    for refusal in refusals:
        lines.append(f"You tried that and the game refused: {refusal}")
    lines.append('Answer with one JSON object: {"action": "<name>", "data": {...}}.')
    return "\n".join(lines)


async def act(event: InputEvent, context: PromptContext, model: PersonaModel, games: Games,
              settings: GameSettings = GameSettings()) -> Outcome:
    """Choose an action for a force event and take it; returns what was tried."""
    game = str(event.meta.get("game") or event.author)
    names = list(event.meta.get("action_names") or [])
    tried: list[ActionAttempt] = []
    refusals: list[str] = []
    result: ActionResult | None = None
    for _ in range(settings.retries + 1):
        specs = games.actions(game, names)
        if not specs:  # the game unregistered them, or is gone: nothing to do
            log.info("force dropped: its actions are gone", extra={"game": game})
            break
        text = force_text(event, specs, games.context(game)[-settings.context_lines:], refusals)
        asked = PromptContext(context.persona, (replace(event, text=text),), context.history, ())
        prompt = await asyncio.to_thread(model.render, asked)
        try:
            answer = json.loads(await model.json(prompt, action_schema(specs), settings.max_json_tokens))
        except ValueError as exc:  # the schema could not be used, or the model ran out of tokens
            log.warning("no valid action from the model", extra={"game": game, "error": str(exc)})
            tried.append({"game": game, "name": None, "data": None, "success": False,
                          "message": f"no valid answer: {exc}", "force_id": event.meta.get("force_id")})
            continue
        name = answer["action"]
        data = json.dumps(answer["data"], ensure_ascii=False) if "data" in answer else None
        result = await games.act(game, name, data)
        tried.append({"game": game, "name": name, "data": data, "success": result.success,
                      "message": result.message, "force_id": event.meta.get("force_id")})
        log.info("game action", extra={"game": game, "action": name, "success": result.success})
        if result.success:
            break
        refusals.append(result.message or "(no reason given)")
    return Outcome(tuple(tried), result)


