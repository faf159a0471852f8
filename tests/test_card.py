import base64
import json
import struct
import zlib
from pathlib import Path

import pytest

from persona_model.card import CardError, load_card, png_with_card

ROOT = Path(__file__).resolve().parent.parent
V2 = {"spec": "chara_card_v2", "spec_version": "2.0",
      "data": {"name": "Mika", "description": "{{char}} loves trains.", "personality": "upbeat",
               "scenario": "", "first_mes": "Hi!", "mes_example": "",
               "character_book": {"entries": [{"keys": ["train"], "content": "{{char}} rode the night train.",
                                               "enabled": True},
                                              {"keys": ["x"], "content": "hidden", "enabled": False}]}}}


def tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0"))
            + chunk(b"IEND", b""))


def test_the_shipped_example_character_loads():
    persona, lore = load_card(ROOT / "persona_model/characters/komorebi.json")
    assert persona.name == "Komorebi"
    assert "{{char}}" not in persona.description and "Komorebi" in persona.description
    assert len(lore) == 3


def test_v2_json_card(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(V2))
    persona, lore = load_card(tmp_path / "c.json")
    assert (persona.name, persona.description, persona.first_message) == ("Mika", "Mika loves trains.", "Hi!")
    assert lore == ("Mika rode the night train.",)


def test_v3_png_card_prefers_ccv3_over_chara(tmp_path):
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {**V2["data"], "name": "Mika Three"}}
    png = png_with_card(png_with_card(tiny_png(), V2, "chara"), v3, "ccv3")
    (tmp_path / "c.png").write_bytes(png)
    persona, _ = load_card(tmp_path / "c.png")
    assert persona.name == "Mika Three"


def test_v2_png_card(tmp_path):
    (tmp_path / "c.png").write_bytes(png_with_card(tiny_png(), V2))
    assert load_card(tmp_path / "c.png")[0].name == "Mika"


@pytest.mark.parametrize("card, message", [
    ({"spec": "chara_card_v2", "data": {"description": "no name"}}, "data.name is missing"),
    ({"spec": "chara_card_v2", "data": {"name": "A", "personality": ["x"]}}, "data.personality must be text, not list"),
    ({"spec": "something_else", "data": {"name": "A"}}, "spec is 'something_else'"),
    ({"spec": "chara_card_v3"}, "data is missing"),
    ({"spec": "chara_card_v2", "data": {"name": "A", "character_book": {"entries": [{"keys": []}]}}},
     "character_book.entries[0].content"),
])
def test_bad_cards_name_the_field(tmp_path, card, message):
    (tmp_path / "bad.json").write_text(json.dumps(card))
    with pytest.raises(CardError) as err:
        load_card(tmp_path / "bad.json")
    assert message in str(err.value)
    assert "bad.json" in str(err.value)


def test_unreadable_cards(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_card(tmp_path / "x.json")
    (tmp_path / "x.png").write_bytes(tiny_png())
    with pytest.raises(CardError, match="no 'chara' or 'ccv3'"):
        load_card(tmp_path / "x.png")
    with pytest.raises(CardError, match="cannot read"):
        load_card(tmp_path / "missing.json")
    bad = tiny_png()
    bad = png_with_card(bad, V2).replace(base64.b64encode(json.dumps(V2).encode())[:8], b"!!!!!!!!")
    (tmp_path / "y.png").write_bytes(bad)
    with pytest.raises(CardError):
        load_card(tmp_path / "y.png")


def test_the_characters_expressions_come_from_her_card_and_vtube_studio(tmp_path):
    from runtime.config import load
    from runtime.parts import expressions, persona_from
    from tests.conftest import write_config

    card = Path(__file__).resolve().parent.parent / "persona_model" / "characters" / "komorebi.json"
    config = load(write_config(tmp_path, character={"card": str(card)}, vts={"hotkeys": {"Big Grin": "Smile"}}),
                  env={})
    tags = expressions(persona_from(config)[0], config)
    assert {"happy", "sad", "surprised", "thinking", "angry", "big_grin"} <= tags
    assert "name" not in tags and "game_name" not in tags
