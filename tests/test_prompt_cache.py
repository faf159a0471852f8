"""The prompt is laid out for the key/value cache: what changes every turn (fired lore, the
viewer's profile with its message count, recalled memories) comes after the conversation, and
history is trimmed in blocks, so the start of the prompt a turn computed is the start of the
next turn's prompt and is not computed again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from runtime.events import ChatMessage, TurnRecord
from tests.conftest import running, write_config
from tests.harness import until
from tests.test_live_loop import say

CARDS = Path(__file__).parent / "data" / "cards"


def stable(record: TurnRecord) -> str:
    """The prompt's text before what changes every turn: the rendered text up to the system
    message after the conversation (or, without one, up to this turn's input)."""
    last = record.messages[-1] if record.messages[-1].role == "user" else record.messages[-2]
    volatile = [m for m in record.messages[1:] if m.role == "system" and m.content in record.prompt]
    start = min([record.prompt.rindex(m.content) for m in volatile] + [record.prompt.rindex(last.content)])
    return record.prompt[:record.prompt.rindex("<|im_start|>", 0, start)]


async def session(tmp_path: Path, model: Any, lines: list[tuple[str, str]], **turn: Any) -> tuple[
        list[TurnRecord], list[tuple[int, int]]]:
    config = write_config(tmp_path, character={"card": str(CARDS / "v2-wren.json"), "greet": False},
                          turn={"recall_k": 3, **turn})
    reused: list[tuple[int, int]] = []
    async with running(config, model) as (app, records):
        app.director.on_turn = lambda r: (records.append(r), reused.append((model.last_stats.cached_tokens,
                                                                            model.last_stats.prepared_tokens)))
        for n, (author, text) in enumerate(lines, 1):
            say(app, text, author)
            await until(lambda n=n: len(records) == n)
    return records, reused


async def test_the_cached_part_does_not_change_when_only_chat_arrives(tmp_path, tiny_model):
    lines = [("Ada", "hi Wren, my cat is called Miso"), ("Ada", "how old is the lamp?"),
             ("Ada", "do you remember my cat?"), ("Bo", "hello from Bo!"), ("Ada", "what about the lamp?"),
             ("Ada", "and my cat, Miso?")]
    records, reused = await session(tmp_path, tiny_model, lines)
    assert all(r.status == "complete" for r in records), [r.error for r in records]
    # what changes every turn is there, after the conversation: the fired lore, the viewer's profile
    assert "Fresnel lens" in records[1].prompt and "Fresnel lens" not in stable(records[1])
    profiles = [m.content for r in records for m in r.messages[1:] if m.role == "system" and "About Ada" in m.content]
    assert len(set(profiles)) >= 3  # her message count moves every turn...
    assert "cat named Fog" in stable(records[0])  # the card's constant lore is cached with the persona
    for before, after, (cached, prepared) in zip(records[:-1], records[1:], reused[1:], strict=True):
        # ...and the start of each prompt is the start of the next: the persona, the rules and the
        # whole conversation before this exchange...
        assert after.prompt.startswith(stable(before)), after.turn_id
        assert stable(after).startswith(stable(before))
        # ...computed once: the exchange before this one while its reply was still being spoken
        assert prepared > 0 and cached >= len(tiny_model.tokenizer(stable(after), add_special_tokens=False)["input_ids"]) - 1


async def test_history_is_trimmed_in_blocks_so_the_cache_survives_most_turns(tmp_path, tiny_model):
    lines = [("Ada", f"line number {i} from Ada") for i in range(9)]
    records, reused = await session(tmp_path, tiny_model, lines, history_messages=8)
    history = [[m for m in r.messages[1:] if m.role != "system"][:-1] for r in records]
    assert max(len(h) for h in history) <= 8
    kept = sum(after.prompt.startswith(stable(before)) for before, after in zip(records[:-1], records[1:], strict=True))
    # one exchange in, one out, every turn would keep none of 8 turns once full; in blocks of half:
    assert kept >= 5, [len(h) for h in history]
    # and where a block went, the shorter conversation was prepared while she spoke: still reused
    for record, (cached, _) in zip(records[1:], reused[1:], strict=True):
        assert cached >= len(tiny_model.tokenizer(stable(record), add_special_tokens=False)["input_ids"]) - 1
    for h in history:  # a trimmed conversation still starts with a viewer's line
        assert not h or h[0].role == "user"
    assert all(isinstance(m, ChatMessage) for h in history for m in h)


async def test_a_prepared_prompt_gives_the_same_reply_and_yields_to_a_generation(tiny_model_dir):
    from persona_model.generation import Sampling
    from persona_model.local import LocalPersonaModel
    from runtime.events import InputEvent, InputKind, Memory, Persona, PromptContext

    greedy = Sampling(max_new_tokens=12, temperature=0)
    cached = LocalPersonaModel.load(tiny_model_dir, sampling=greedy)
    plain = LocalPersonaModel.load(tiny_model_dir, sampling=greedy, prefix_cache=False)
    card = Persona("Testa", "A cheerful robot who loves puzzles and tea. " * 10)

    def chat(text: str, history: tuple[ChatMessage, ...]) -> PromptContext:
        return PromptContext(card, (InputEvent(InputKind.CHAT, text, "test", 0.0, "Ada"),), history,
                             (Memory(1, f"Ada asked about {text}"),))

    first = cached.render(chat("hello there", ()))
    reply = "".join([p async for p in cached.stream(first)])
    history = (ChatMessage("user", "Ada: hello there"), ChatMessage("assistant", reply or "hi"))
    cached.prepare(PromptContext(card, (), history))  # while her reply is spoken
    assert await asyncio.to_thread(cached._worker.idle, 60)
    second = cached.render(chat("what do you like?", history))
    again = "".join([p async for p in cached.stream(second)])
    assert again == "".join([p async for p in plain.stream(second)])  # greedy: the same reply
    stats = cached.last_stats
    # the stream's end is timed after its last words (a reply's last sentence is cut only then)
    assert stats.ended_at >= (stats.pieces[-1][0] if stats.pieces else stats.started_at) > 0
    start = cached.renderer.prefix(PromptContext(card, (), history))
    assert start is not None and second.text.startswith(start)
    # only the turn's memories and input were computed when she was asked
    assert stats.prepared_tokens > 0 and stats.cached_tokens >= cached.renderer.count(start) - 1
    # a long history being prepared: a reply asked for meanwhile stops it between two layers
    long = tuple(ChatMessage("user" if i % 2 == 0 else "assistant", f"line {i} " + "words " * 60) for i in range(16))
    cached.prepare(PromptContext(card, (), long))
    third = "".join([p async for p in cached.stream(cached.render(chat("and games?", history)))])
    assert third == "".join([p async for p in plain.stream(cached.render(chat("and games?", history)))])


def test_a_template_that_takes_a_system_message_only_first_gets_the_turns_context_in_the_user_turn(tiny_model):
    from persona_model.prompt import PromptRenderer
    from runtime.events import InputEvent, InputKind, Memory, Persona, PromptContext

    strict = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
              "{{ raise_exception('System role only at the start') }}{% endif %}"
              "<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
              "{% if add_generation_prompt %}<assistant>{% endif %}")
    renderer = PromptRenderer(tiny_model.tokenizer, 2000)
    renderer.template = strict
    persona = Persona("Testa", "A test character.", post_history_instructions="Keep it short.")
    context = PromptContext(persona, (InputEvent(InputKind.CHAT, "and my cat?", "test", 0.0, "Ada"),),
                            (ChatMessage("user", "Ada: hi"), ChatMessage("assistant", "Hello!")),
                            (Memory(1, "Ada's cat is called Miso."),))
    text = renderer.render(context).text
    assert text.count("<system>") == 1 and text.endswith("</user><assistant>")
    assert "<user>Things you remember:\n- Ada's cat is called Miso.\n\nAda: and my cat?\n\nKeep it short.</user>" in text


async def test_a_prompt_aside_such_as_reflection_leaves_the_conversations_cache(tiny_model_dir):
    import dataclasses

    from persona_model.generation import Sampling
    from persona_model.local import LocalPersonaModel
    from runtime.events import InputEvent, InputKind, Persona, PromptContext

    model = LocalPersonaModel.load(tiny_model_dir, sampling=Sampling(max_new_tokens=6, temperature=0))
    card = Persona("Testa", "A cheerful robot who loves puzzles and tea. " * 10)

    def chat(text: str, persona: Persona = card) -> PromptContext:
        return PromptContext(persona, (InputEvent(InputKind.CHAT, text, "test", 0.0, "Ada"),))

    [_ async for _ in model.stream(model.render(chat("hello")))]
    other = Persona("Testa", system_prompt="Look back over the stream and write what you learned.")
    aside = dataclasses.replace(model.render(chat("a long transcript", other)), aside=True)
    [_ async for _ in model.stream(aside)]
    assert model.last_stats.cached_tokens == 0
    [_ async for _ in model.stream(model.render(chat("and games?")))]
    assert model.last_stats.cached_tokens > 100  # the card was not computed again


async def test_a_turn_asking_during_a_reflections_long_prompt_waits_one_layer_not_the_whole_prompt(tiny_model_dir):
    """Reflection's prompt (a transcript of 40 turns, a thousand tokens) is seconds of work in one
    forward pass on the bundled model; a viewer speaking meanwhile must not wait for all of it."""
    import dataclasses
    import threading

    from persona_model.generation import Sampling
    from persona_model.local import WARM_CHUNK, LocalPersonaModel, _decoder_layers
    from runtime.events import InputEvent, InputKind, Persona, PromptContext

    greedy = Sampling(max_new_tokens=6, temperature=0)
    model = LocalPersonaModel.load(tiny_model_dir, sampling=greedy)
    plain = LocalPersonaModel.load(tiny_model_dir, sampling=greedy, prefix_cache=False)
    card = Persona("Testa", "A cheerful robot who loves puzzles and tea. " * 10)
    reflecting = Persona("Testa", system_prompt="Look back over the stream and write what you learned.")
    transcript = " ".join(f"Ada: line {i} about cats and tea." for i in range(60))
    aside = dataclasses.replace(model.render(PromptContext(reflecting, (
        InputEvent(InputKind.IDLE, transcript, "reflection", 0.0),))), aside=True)
    assert model.renderer.count(aside.text) > 4 * WARM_CHUNK
    # computed a chunk at a time, it says what it says computed whole
    assert "".join([p async for p in model.stream(aside)]) == "".join(
        [p async for p in plain.stream(dataclasses.replace(aside, aside=False))])

    sizes: list[int] = []  # tokens of each forward pass
    layers: list[int] = []  # for each decoder layer run, the forward pass it belongs to
    second, go = threading.Event(), threading.Event()

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        sizes.append(int(kwargs["input_ids"].shape[1]))

    def hold_the_second_chunk_in_its_first_layer(module: Any, args: Any) -> None:
        if len(sizes) == 2 and not second.is_set():
            second.set()
            go.wait(30)

    decoder = _decoder_layers(model.model)
    assert decoder is not None and len(decoder) >= 2
    handles = [model.model.register_forward_pre_hook(count, with_kwargs=True),
               decoder[0].register_forward_pre_hook(hold_the_second_chunk_in_its_first_layer),
               *(layer.register_forward_pre_hook(lambda m, a: layers.append(len(sizes))) for layer in decoder)]

    async def read(prompt: Any) -> str:
        return "".join([p async for p in model.stream(prompt)])

    reflection = asyncio.create_task(read(aside))
    assert await asyncio.to_thread(second.wait, 30)
    reflection.cancel()  # a turn started: the reflection's reader leaves
    await asyncio.gather(reflection, return_exceptions=True)
    go.set()
    turn = model.render(PromptContext(card, (InputEvent(InputKind.CHAT, "and games?", "test", 0.0, "Ada"),)))
    reply = await read(turn)
    for handle in handles:
        handle.remove()
    # the same reply as a model that never reflected: the half-computed chunk left nothing behind
    assert reply == "".join([p async for p in plain.stream(turn)])
    # the reflection's first chunk whole; of its second, the one layer that had started; then the turn
    assert sizes[:2] == [WARM_CHUNK, WARM_CHUNK]
    assert layers.count(1) == len(decoder) and layers.count(2) == 1
    assert sizes[2] == model.last_stats.prompt_tokens - model.last_stats.cached_tokens

    # tried again, it goes on from that chunk; stopped while writing, it goes on after its words
    whole = "".join([p async for p in plain.stream(dataclasses.replace(aside, aside=False))])
    words: list[str] = []
    async with contextlib.aclosing(model.stream(aside)) as stream:
        async for piece in stream:
            words.append(piece)
            if len(words) == 2:
                break
    assert model.last_stats.cached_tokens == WARM_CHUNK
    written = "".join(words)
    rest = "".join([p async for p in model.stream(dataclasses.replace(aside, text=aside.text + written))])
    assert model.last_stats.cached_tokens >= model.last_stats.prompt_tokens - 2  # nothing computed twice
    assert (written + rest).startswith(whole)  # the same words (a try may write max_new_tokens more)


async def test_in_a_duo_the_next_character_s_turn_is_prepared_while_the_other_speaks(tmp_path, tiny_model_dir):
    from persona_model.generation import Sampling
    from persona_model.local import LocalPersonaModel
    from tests.test_duo import duo_config
    from tests.test_duo import say as chat

    async def show(ahead: str, speed: float = 20.0) -> tuple[list[TurnRecord], list[tuple[int, int]], list[float]]:
        model = LocalPersonaModel.load(tiny_model_dir, name="tiny", sampling=Sampling(max_new_tokens=24, temperature=0))
        reused: list[tuple[int, int]] = []
        ended: list[float] = []
        (tmp_path / str(ahead)).mkdir()
        async with running(duo_config(tmp_path / str(ahead), banter=3, turn={"recall_k": 3}), model,
                           speed=speed) as (app, records):
            app.director.ahead = ahead
            app.director.on_turn = lambda r: (records.append(r), ended.append(app.director.cast.clock.now()),
                                              reused.append((model.last_stats.cached_tokens,
                                                             model.last_stats.prepared_tokens)))
            chat(app, "hello you two, what is your favourite tea?", "Ada")
            await until(lambda: len(records) == 4)
        assert model.shared_by == 2  # a prompt start kept for each character
        return records, reused, ended

    records, reused, ended = await show(ahead="prompt")
    tokenizer = LocalPersonaModel.load(tiny_model_dir).tokenizer
    assert [r.persona for r in records] == ["Komorebi", "Kage", "Komorebi", "Kage"]
    assert all(r.spoken_text for r in records), [r.error for r in records]
    for record, (cached, prepared) in zip(records[1:], reused[1:], strict=True):
        # each banter reply's prompt start (her persona, her history with the other's last words
        # in it) was computed while the other was still speaking, under her own name
        assert prepared > 0, record.persona
        assert cached >= len(tokenizer(stable(record), add_special_tokens=False)["input_ids"]) - 1
    plain, unprepared, _ = await show(ahead="off")
    assert [r.spoken_text for r in plain] == [r.spoken_text for r in records]  # greedy: the same show
    # her whole banter turn started while the line it answers was still spoken: the same show again
    # (speech at twice real time: her first sentence takes longer to say than the next one to write)
    early, _, over = await show(ahead="turn", speed=2.0)
    assert [r.spoken_text for r in early] == [r.spoken_text for r in records]
    assert [r.prompt for r in early] == [r.prompt for r in records]

    def first_token(record: TurnRecord) -> float:
        return record.inputs[0].received_at + record.timings["first_token"]
    assert all(first_token(r) < end for r, end in zip(early[1:], over, strict=False))  # before the other was done
    assert all(first_token(r) > end for r, end in zip(records[1:], ended, strict=False))  # after
    # each preparing only her own next prompt, Kage's first answer computed her whole prompt start
    cached, prepared = unprepared[1]
    assert prepared == 0 and cached < len(tokenizer(stable(plain[1]), add_special_tokens=False)["input_ids"]) - 1
