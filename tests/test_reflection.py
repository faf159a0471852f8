"""Reflection: after N turns the character looks back over them with its own model, in the
background, and what it writes becomes memories with the turns they came from. A viewer who speaks
meanwhile is answered at once: the reflection stops, and goes on from there later."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncGenerator

from runtime.events import ChatMessage, Prompt, PromptContext, TurnStatus, input_text
from runtime.reflection import parse
from tests.test_live_loop import character, db_rows, say, until

REFLECTION = ("Episode: Ada told me about her cat Miso and we talked about ramen.\n"
              "Fact: Ada's cat is called Miso.\n"
              "Fact: Bo is learning the cello.\n"
              "Thought: I like how cosy chat was tonight.\n")


class ThoughtfulModel:
    """Replies quickly to chat; reflects slowly (a word every 30 ms), so a reflection is still
    running when the next viewer speaks; given its own words back after the prompt, it goes on
    after them, as a language model does. Records what happened, in order."""

    name = "thoughtful"
    adapter = None
    traits: dict[str, float] = {}

    def __init__(self) -> None:
        self.events: list[str] = []
        self.reflection_prompts: list[str] = []
        self.rendered: list[str] = []  # what render made of reflection contexts
        self.words = 0  # reflection words written, all tries

    def render(self, context: PromptContext) -> Prompt:
        msgs = (ChatMessage("system", context.persona.system_prompt or context.persona.name),
                ChatMessage("user", input_text(context.inputs)))
        text = "\n".join(f"{m.role}: {m.content}" for m in msgs)
        if "Look back on it" in text:
            self.rendered.append(text)
        return Prompt(text, msgs, len(text.split()))

    async def aclose(self) -> None:
        pass

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        reflecting = "Look back on it" in prompt.text
        if reflecting:
            self.reflection_prompts.append(prompt.text)
        self.events.append("reflection started" if reflecting else "reply started")
        words = (REFLECTION + " padding" * 60).split(" ") if reflecting else ["Oh", " nice.", " Tell", " me", " more!"]
        if reflecting:  # after its own words from a try that was stopped
            written = next(prompt.text[len(r):] for r in self.rendered if prompt.text.startswith(r))
            while written:
                assert written.startswith(words[0] + " "), "a reflection goes on from its own words"
                written = written[len(words.pop(0)) + 1:]
        finished = False
        try:
            for word in words:
                await asyncio.sleep(0.03 if reflecting else 0.001)
                self.words += reflecting
                yield word + " " if reflecting else word
            finished = True
        finally:
            if reflecting:
                self.events.append("reflection finished" if finished else "reflection stopped")


async def test_reflection_runs_between_turns_and_gives_way_to_a_viewer(tmp_path):
    model = ThoughtfulModel()
    async with character(tmp_path, model, memory={"reflection": {"enabled": True, "every_turns": 3}}) as (app, records):
        assert app.reflector is not None
        app.reflector.settings = dataclasses.replace(app.reflector.settings, poll_s=0.02)
        for i, text in enumerate(["my cat is called Miso", "I love ramen", "Bo here, learning the cello"]):
            say(app, text, author="Bo" if i == 2 else "Ada")
            await until(lambda i=i: len(records) == i + 1)
        await until(lambda: "reflection started" in model.events)  # three turns: due, and the director is free
        assert "Ada: my cat is called Miso" in model.reflection_prompts[0]
        assert "Testa: Oh nice. Tell me more!" in model.reflection_prompts[0]

        await until(lambda: model.words >= 4)
        say(app, "are you still there?", author="Cy")  # mid-reflection
        await until(lambda: len(records) == 4)
        assert records[3].status is TurnStatus.COMPLETE
        # the reply did not wait for the reflection (seconds long): the reflection stopped at once
        assert model.events[3:6] in (["reflection started", "reflection stopped", "reply started"],
                                     ["reflection started", "reply started", "reflection stopped"])
        assert app.reflector.abandoned == 1

        await until(lambda: app.reflector.done == 1, timeout=60)  # tried again once the director was free
        assert model.events[-1] == "reflection finished"
        # on the same three turns, going on from what it had written: nothing computed twice
        stopped, resumed = model.reflection_prompts
        assert resumed.startswith(stopped) and len(resumed) > len(stopped) and "Cy:" not in resumed

    rows = db_rows(app, "SELECT kind, text, source, importance, source_turns FROM memories"
                        " WHERE source = 'reflection' ORDER BY id")
    assert [(k, t) for k, t, *_ in rows] == [
        ("episode", "Ada told me about her cat Miso and we talked about ramen."),
        ("fact", "Ada's cat is called Miso."),
        ("fact", "Bo is learning the cello."),
        ("reflection", "I like how cosy chat was tonight."),
    ]
    turn_ids = [r[0] for r in db_rows(app, "SELECT id FROM turns ORDER BY started_at")]
    assert all(json.loads(r[4]) == turn_ids[:3] for r in rows)  # the three it looked back on
    # the interrupting one waits for the next reflection
    [(upto,)] = db_rows(app, "SELECT value FROM state WHERE key = 'reflected_until'")
    [(third,)] = db_rows(app, f"SELECT started_at FROM turns WHERE id = '{turn_ids[2]}'")
    assert float(upto) == third


async def test_a_reflection_stopped_and_resumed_again_and_again_still_ends():
    """Each try may write a whole reply's worth; resumed after every line on a busy channel, a
    small model that never stops by itself would write on for as long as the stream lasts."""
    from runtime.events import LoggedTurn, Persona
    from runtime.ports import MonotonicClock
    from runtime.reflection import WRITTEN_MAX, Reflector

    class Rambler(ThoughtfulModel):
        async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
            self.reflection_prompts.append(prompt.text)
            for i in range(200):  # never a stop of its own
                self.words += 1
                yield f"Fact: Ada has a cat called Miso number {i}.\n"

    class Log:
        async def unreflected(self, limit: int) -> list[LoggedTurn]:
            return []

        async def reflected(self, until: LoggedTurn, memories: list) -> None:
            self.memories = memories

    model, log = Rambler(), Log()
    reflector = Reflector(model, log, Persona("Testa", "A test character."), MonotonicClock(), lambda: False)
    written = "".join(f"Fact: Bo plays the cello number {i}.\n" for i in range(15))  # earlier tries' words
    assert await reflector.reflect([LoggedTurn("t1", 0.0, "Ada: my cat is Miso", "Nice!")], written)
    assert model.reflection_prompts[0].endswith(written)  # it went on after them
    line = len("Fact: Ada has a cat called Miso number 10.\n")
    assert model.words == -(-(WRITTEN_MAX - len(written)) // line)  # and stopped at the cap, not at 200 lines
    assert len(log.memories) == 15 + model.words


def test_reflections_that_follow_no_format_are_kept_as_one_episode():
    assert [(m.kind, m.text) for m in parse("- episode: We sang.\nFACT:  Bo likes  jazz.\nfact: Bo likes jazz.", [])] == [
        ("episode", "We sang."), ("fact", "Bo likes jazz.")]
    loose = parse("we had a lovely time singing together", [])
    assert [(m.kind, m.text) for m in loose] == [("episode", "we had a lovely time singing together")]
    assert parse("   ", []) == []


def test_a_small_models_runaway_reflection_is_no_memory():
    """What the bundled 135M model wrote once: recalled into every prompt after it, it poisoned them."""
    runaway = ("I am an AI created by the creators of a small, cheerful AI VTB which makes fun messages. These are"
               " some of the rules: 1. Responds to viewer questions using user inputted text. 2. Responds to visitor"
               " messages using user inputted text. 3. Responds to visitor messages using user inputted text. 4."
               " Responds to viewer inquiries using user inputted text. 5. Responds to viewer queries using user"
               " inputted text. 6. Repeats same message/answer")
    assert parse(runaway, []) == []  # no format, and too long to be an episode
    looping = "Thought: " + "I keep thinking about myself again, and " * 6
    assert [m.text for m in parse(f"Fact: Bo likes jazz.\n{looping}", [])] == ["Bo likes jazz."]
