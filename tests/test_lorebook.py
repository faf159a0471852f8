"""Character cards as SillyTavern and elizaOS write them (docs/cards.md), tried as a new user
would: V1, V2 and V3 cards, as JSON and inside a PNG, with and without a lorebook, and an elizaOS
character file. What shows: the macros are filled everywhere ({{char}}, {{user}}, {{original}}),
a lorebook entry enters the prompt when its key is said (every time, not once), constant entries
always, selective ones only with their secondary key, disabled ones never; and a broken file is
refused naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_model.card import CardError, load_card, parse_card, png_with_card
from persona_model.prompt import DEFAULT_SYSTEM, PromptRenderer
from runtime.events import ChatMessage, InputEvent, InputKind, Persona, PromptContext
from tests.conftest import running, write_config
from tests.harness import until
from tests.test_card import tiny_png
from tests.test_live_loop import say

CARDS = Path(__file__).parent / "data" / "cards"


def system_of(persona: Persona, text: str, history: tuple[ChatMessage, ...] = (), author: str = "Ada") -> str:
    """The system message and the note after the conversation, for one viewer line."""
    event = InputEvent(InputKind.CHAT, text, "test", 0.0, author)
    prompt = PromptRenderer(None, 4096).render(PromptContext(persona, (event,), history))
    return "\n".join(m.content for m in prompt.messages if m.role == "system")


@pytest.mark.parametrize("form", ["json", "png"])
def test_a_v1_card_loads_from_json_and_png(tmp_path, form):
    card = json.loads((CARDS / "v1-aster.json").read_text())
    path = tmp_path / f"aster.{form}"
    path.write_bytes(png_with_card(tiny_png(), card) if form == "png" else json.dumps(card).encode())
    persona, lore = load_card(path)
    assert persona.name == "Aster" and lore == () and persona.lorebook == ()
    text = system_of(persona, "hello")
    assert "Aster is a retired space courier" in text and "Chat sits down at Aster's noodle stand" in text
    assert "{{" not in text


def test_a_v2_cards_macros_are_filled_everywhere_and_original_is_the_default_prompt():
    persona, lore = load_card(CARDS / "v2-wren.json")
    text = system_of(persona, "hi Wren")
    default = DEFAULT_SYSTEM.format(name="Wren")
    assert text.startswith(default + " Wren never reveals where the island is.")  # {{original}} in system_prompt
    assert "{{" not in text and "protective of Chat" in text
    # the lorebook: its constant entry is in every prompt, {{char}} and {{user}} filled in it too
    assert "Wren keeps a cat named Fog on the island." in text
    # post_history_instructions = "{{original}}": the default note after the conversation, which is none
    event = InputEvent(InputKind.CHAT, "hi", "test", 0.0, "Ada")
    messages = PromptRenderer(None, 4096).render(PromptContext(persona, (event,))).messages
    assert [m.role for m in messages] == ["system", "user"]
    # every enabled entry is a memory too (recalled by meaning, trained into the weights); the disabled one is not
    assert "Wren learned to read Morse code from her grandmother." in lore and not any("Skerra" in t for t in lore)


def test_a_lorebook_entry_enters_when_its_key_is_said_every_time():
    persona, _ = load_card(CARDS / "v2-wren.json")
    lamp = "a Fresnel lens from 1889 that Chat once asked about"
    for _ in range(3):  # the same question brings the same entry, however often it is asked
        assert lamp in system_of(persona, "how old is the LAMP up there?")
    assert lamp not in system_of(persona, "do you like tea?")
    assert lamp not in system_of(persona, "the lamplighter walked by")  # a whole word, not a part of one
    # scan depth 2: the message before this line counts, the one before that does not
    asked = ChatMessage("user", "tell me about the lighthouse")
    assert lamp in system_of(persona, "and?", (asked,))
    assert lamp not in system_of(persona, "and?", (asked, ChatMessage("assistant", "It is old.")))


def test_selective_case_sensitive_disabled_and_insertion_order():
    persona, _ = load_card(CARDS / "v2-wren.json")
    wreck = "guided a fishing boat called the Merrow home"
    assert wreck not in system_of(persona, "remember the storm?")  # selective: a secondary key is needed
    both = system_of(persona, "remember the storm and the boat?")
    assert wreck in both
    assert "pickled herring" not in system_of(persona, "what about the merrow?")  # case-sensitive key
    text = system_of(persona, "what about the Merrow in the storm, the boat and the lamp?")
    assert "pickled herring" in text
    order = [text.index(s) for s in ("cat named Fog", wreck, "Fresnel lens", "pickled herring")]
    assert order == sorted(order)  # insertion_order 5, 10, 20, 30
    assert "Skerra" not in system_of(persona, "tell me the secret")  # disabled


def test_a_v3_png_card_with_regex_keys_and_not_any_logic(tmp_path):
    card = json.loads((CARDS / "v3-juniper.json").read_text())
    v2 = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Old Juniper"}}
    (tmp_path / "juniper.png").write_bytes(png_with_card(png_with_card(tiny_png(), v2, "chara"), card, "ccv3"))
    persona, _ = load_card(tmp_path / "juniper.png")
    assert persona.name == "Juniper"  # ccv3 before chara
    flytrap = system_of(persona, "is that a Venus Flytrap?")
    assert "Gerald" in flytrap and "@@" not in flytrap  # /pattern/i; the V3 decorator line is no text
    assert "open at dusk" in system_of(persona, "the moon flowers are pretty")  # use_regex
    assert "open at dusk" not in system_of(persona, "the moon is pretty")
    assert "roof leaks" in system_of(persona, "does it rain a lot?")  # not-any: no secondary key said
    assert "roof leaks" not in system_of(persona, "does the roof leak in the rain?")
    note = PromptRenderer(None, 4096).render(PromptContext(persona, (InputEvent(
        InputKind.CHAT, "hi", "test", 0.0, "Ada"),))).messages[-1]
    assert note == ChatMessage("system", "Keep answers short, Ada is on mobile.")  # {{user}}: who speaks


def test_an_eliza_character_file_imports_beside_the_cards(tmp_path):
    persona, lore = load_card(CARDS / "eliza-pip.character.json")
    assert persona.name == "Pip" and persona.personality == "cheerful, precise, competitive"
    assert persona.description.startswith("Pip is a tiny robot who speedruns old platformers. Pip was built")
    assert "How Pip talks: short sentences. says beep when happy. cheers for viewers' runs." in persona.description
    assert "uses hashtags" not in persona.description  # style.post is for social posts
    assert persona.scenario == "Pip likes to talk about speedrunning, retro games, frame data."
    assert persona.system_prompt.startswith("Roleplay as Pip")
    assert persona.examples.splitlines() == [
        "<START>", "{{user}}: What's your PB?", "{{char}}: Eleven forty-two! Beep!",
        "<START>", "{{user}}: Any tips, {{user}} asks?", "{{char}}: Jump early, land late."]
    assert lore == ("Pip's best time in Cloud Hopper is 11 minutes 42 seconds.", "Pip is afraid of magnets.",
                    "A frame is a sixtieth of a second.")
    text = system_of(persona, "hi")
    assert "Chat: What's your PB?" in text and "Pip: Jump early" in text and "{{" not in text


@pytest.mark.parametrize("card, message", [
    ({"name": "Pip", "bio": 3}, "bio must be text or a list of texts, not int"),
    ({"bio": "no name"}, "name is missing"),
    ({"name": "Pip", "bio": "x", "lore": ["ok", 5]}, "lore[1] must be text, not int"),
    ({"name": "Pip", "bio": "x", "style": ["short"]}, "style must be an object"),
    ({"name": "Pip", "bio": "x", "style": {"chat": "short"}}, "style.chat must be a list of texts"),
    ({"name": "Pip", "bio": "x", "messageExamples": [[{"user": "a", "content": "hi"}]]},
     "messageExamples[0][0] needs a speaker"),
    ({"name": "Pip", "bio": "x", "system": ["a"]}, "system must be text"),
])
def test_a_broken_eliza_file_is_refused_naming_the_field(tmp_path, card, message):
    (tmp_path / "pip.character.json").write_text(json.dumps(card))
    with pytest.raises(CardError) as err:
        load_card(tmp_path / "pip.character.json")
    assert message in str(err.value) and "pip.character.json" in str(err.value)


@pytest.mark.parametrize("entry, message", [
    ({"keys": ["/[unclosed/"], "content": "x"}, "is not a regular expression that compiles"),
    ({"keys": "lamp", "content": "x", "use_regex": True, "secondary_keys": ["("]}, "is not a regular expression"),
    ({"keys": [1], "content": "x"}, "entries[0].keys must be a list of strings"),
    ({"keys": ["a"], "content": "x", "insertion_order": "first"}, "insertion_order must be a number"),
])
def test_a_broken_lorebook_entry_is_refused_naming_it(entry, message):
    card = {"spec": "chara_card_v2", "data": {"name": "W", "character_book": {"entries": [entry]}}}
    with pytest.raises(CardError) as err:
        parse_card(card, "w.json")
    assert message in str(err.value) and "character_book.entries[0]" in str(err.value)
    with pytest.raises(CardError, match="scan_depth must be a whole number"):
        parse_card({"spec": "chara_card_v2", "data": {"name": "W", "character_book": {"scan_depth": -1}}}, "w.json")


async def test_a_running_character_brings_up_the_entry_each_time_it_is_asked(tmp_path, tiny_model):
    config = write_config(tmp_path, character={"card": str(CARDS / "v2-wren.json"), "greet": False})
    async with running(config, tiny_model) as (app, records):
        for n in (1, 2, 3):
            say(app, "how old is the lamp?")
            await until(lambda n=n: len(records) == n)
        say(app, "what's for dinner?")
        await until(lambda: len(records) == 4)
    lamp = "a Fresnel lens from 1889"
    fired = ["".join(m.content for m in r.messages[1:] if m.role == "system") for r in records]  # after the chat
    assert [lamp in text for text in fired] == [True, True, True, "lamp" in records[2].spoken_text]
    assert all("cat named Fog" in r.messages[0].content for r in records)  # constant: with the persona


def test_recursive_scanning_and_the_books_token_budget():
    def card(**book):
        return parse_card({"spec": "chara_card_v2", "data": {"name": "Wren", "character_book": {**book, "entries": [
            {"keys": ["lamp"], "content": "The lamp was a gift from the Merrow's captain.", "insertion_order": 1,
             "priority": 10},
            {"keys": ["captain"], "content": "The captain is called Ide and fishes for eels.", "insertion_order": 2,
             "priority": 5},
            {"keys": ["eels"], "content": "Eels are Wren's least favourite food.", "insertion_order": 3,
             "priority": 1, "extensions": {"exclude_recursion": True}},
            {"keys": ["food"], "content": "Wren eats porridge every morning.", "insertion_order": 4}]}}}, "w.json")[0]

    plain = system_of(card(), "tell me about the lamp")
    assert "gift from the Merrow" in plain and "called Ide" not in plain  # keys in entries fire nothing by default
    deep = system_of(card(recursive_scanning=True), "tell me about the lamp")
    assert "called Ide" in deep and "least favourite food" in deep  # lamp -> captain -> eels
    assert "porridge" not in deep  # the eels entry is excluded from recursion: its "food" fires nothing
    tight = system_of(card(recursive_scanning=True, token_budget=30), "tell me about the lamp")
    assert "gift from the Merrow" in tight and "called Ide" not in tight  # over budget: lowest priority out first
    assert "least favourite" not in tight
    with pytest.raises(CardError, match="token_budget must be a whole number"):
        card(token_budget="lots")
