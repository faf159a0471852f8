"""Load a persona from a SillyTavern character card: V2 or V3, as JSON or inside a PNG.

A PNG card keeps base64 JSON in a text chunk: `ccv3` (V3) or `chara` (V2). Errors name the file
and the field that is missing or wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from runtime.events import Persona

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_CARD_BYTES = 32 << 20  # a card file larger than this is refused before it is read
MAX_TEXT_BYTES = 8 << 20  # a card's JSON (after base64 and decompression) may be this large
SPECS = {"chara_card_v2": "2", "chara_card_v3": "3"}
TEXT_FIELDS = {  # card field -> Persona field
    "description": "description",
    "personality": "personality",
    "scenario": "scenario",
    "first_mes": "first_message",
    "mes_example": "examples",
    "system_prompt": "system_prompt",
    "post_history_instructions": "post_history_instructions",
}
_CHAR = re.compile(r"\{\{char\}\}|<bot>", re.IGNORECASE)


class CardError(ValueError):
    """A character card that cannot be used; the message names the file and the field."""


def load_card(path: Path | str) -> tuple[Persona, tuple[str, ...]]:
    """The persona in a card, and the texts of its enabled lorebook entries."""
    path = Path(path)
    try:
        if (size := path.stat().st_size) > MAX_CARD_BYTES:
            raise CardError(f"{path}: {size} bytes; a card may be {MAX_CARD_BYTES >> 20} MB at most")
        raw = path.read_bytes()
    except OSError as exc:
        raise CardError(f"{path}: cannot read the card ({exc.strerror or exc})") from None
    return parse_card_bytes(raw, str(path))


def parse_card_bytes(raw: bytes, where: str = "card") -> tuple[Persona, tuple[str, ...]]:
    """A card file's bytes (PNG or JSON) to the persona and lore; CardError naming what is wrong."""
    path = where
    if raw.startswith(PNG_MAGIC):
        text = _png_card_text(path, raw)
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CardError(f"{path}: neither a PNG nor UTF-8 JSON") from None
    if len(text) > MAX_TEXT_BYTES:
        raise CardError(f"{path}: the card's text is {len(text)} characters; at most {MAX_TEXT_BYTES}")
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CardError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise CardError(f"{path}: JSON nested too deeply") from None
    return parse_card(card, str(path))


def parse_card(card: Any, where: str = "card") -> tuple[Persona, tuple[str, ...]]:
    if not isinstance(card, dict):
        raise CardError(f"{where}: a card must be a JSON object")
    spec = card.get("spec")
    data: Any
    if spec is None and "name" in card and "data" not in card:
        data, prefix = card, ""  # a V1 card: the fields sit at the top level
    elif not isinstance(spec, str) or spec not in SPECS:
        raise CardError(f"{where}: spec is {repr(spec)[:60]}; expected 'chara_card_v2' or 'chara_card_v3'")
    else:
        data, prefix = card.get("data"), "data."
        if not isinstance(data, dict):
            raise CardError(f"{where}: data is missing or not an object")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CardError(f"{where}: {prefix}name is missing or empty")
    name = name.strip()
    fields: dict[str, str] = {}
    for key, attr in TEXT_FIELDS.items():
        value = data.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise CardError(f"{where}: {prefix}{key} must be text, not {type(value).__name__}")
        fields[attr] = _CHAR.sub(name, value).strip()
    lore = _lore(data.get("character_book"), f"{where}: {prefix}character_book", name)
    return Persona(name=name, source=where, **fields), lore


def _lore(book: Any, where: str, name: str) -> tuple[str, ...]:
    if book is None:
        return ()
    if not isinstance(book, dict) or not isinstance(book.get("entries", []), list):
        raise CardError(f"{where}: must be an object with a list of entries")
    texts: list[str] = []
    for i, entry in enumerate(book.get("entries", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise CardError(f"{where}.entries[{i}].content is missing or not text")
        if entry.get("enabled", True) and entry["content"].strip():
            texts.append(_CHAR.sub(name, entry["content"]).strip())
    return tuple(texts)


def _png_card_text(path: str, raw: bytes) -> str:
    try:
        chunks = dict(_png_text_chunks(raw))
    except CardError as exc:
        raise CardError(f"{path}: {exc}") from None
    for key in ("ccv3", "chara"):
        if key in chunks:
            try:
                return base64.b64decode(chunks[key], validate=False).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise CardError(f"{path}: the PNG's {key!r} chunk is not base64 UTF-8 JSON") from None
    raise CardError(f"{path}: a PNG without a character card (no 'chara' or 'ccv3' text chunk)")


def _png_text_chunks(raw: bytes) -> list[tuple[str, bytes]]:
    """(keyword, text) of every tEXt, zTXt and iTXt chunk."""
    out: list[tuple[str, bytes]] = []
    pos = len(PNG_MAGIC)
    while pos + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[pos : pos + 8])
        body = raw[pos + 8 : pos + 8 + length]
        pos += 12 + length
        try:
            if kind == b"tEXt":
                key, _, text = body.partition(b"\0")
                out.append((key.decode("latin-1"), text))
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out.append((key.decode("latin-1"), _inflate(rest[1:])))
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                out.append((key.decode("latin-1"), _inflate(text) if compressed else text))
        except (zlib.error, IndexError):
            continue
        if kind == b"IEND":
            break
    return out


def _inflate(data: bytes) -> bytes:
    """zlib data, refused when it would inflate past MAX_TEXT_BYTES (a decompression bomb)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_BYTES + 1)
    if len(out) > MAX_TEXT_BYTES:
        raise CardError(f"a compressed text chunk inflates past {MAX_TEXT_BYTES >> 20} MB")
    return out


def png_with_card(image: bytes, card: dict[str, Any], key: str = "chara") -> bytes:
    """A copy of a PNG with the card in a tEXt chunk (for tests and for exporting a card)."""
    if not image.startswith(PNG_MAGIC):
        raise CardError("not a PNG image")
    payload = key.encode("latin-1") + b"\0" + base64.b64encode(json.dumps(card).encode("utf-8"))
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + payload) & 0xFFFFFFFF)
    iend = image.rfind(b"IEND") - 4
    return image[:iend] + chunk + image[iend:]
