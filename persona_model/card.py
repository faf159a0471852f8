"""Load a persona from a character card: SillyTavern's V1, V2 or V3, as JSON or inside a PNG, or
an elizaOS character file (docs/cards.md).

A PNG card keeps base64 JSON in a text chunk: `ccv3` (V3) or `chara` (V2). Errors name the file
and the field that is missing or wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from persona_model.lorebook import key_pattern
from runtime.events import LoreEntry, Persona

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
_NUMBERED_USER = re.compile(r"\{\{user\d*\}\}")  # elizaOS examples: {{user1}}, {{user2}}


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
    if spec is None and "bio" in card:
        return parse_eliza(card, where)
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
    where_book = f"{where}: {prefix}character_book"
    book, depth, lore = _lore(data.get("character_book"), where_book, name)
    budget, recursive = _book_settings(data.get("character_book"), where_book)
    return Persona(name=name, source=where, lorebook=book, scan_depth=depth, lore_budget=budget,
                   lore_recursive=recursive, **fields), lore


def _book_settings(book: Any, where: str) -> tuple[int, bool]:
    """The book's token_budget (0: none) and recursive_scanning."""
    if not isinstance(book, dict):
        return 0, False
    budget = book.get("token_budget") or 0
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise CardError(f"{where}.token_budget must be a whole number of tokens, not {budget!r:.40}")
    return budget, bool(book.get("recursive_scanning"))


def _lore(book: Any, where: str, name: str) -> tuple[tuple[LoreEntry, ...], int, tuple[str, ...]]:
    """The keyed and constant entries (the lorebook), its scan depth, and the texts of every
    enabled entry: memories too, recalled by meaning when no key fires, and trained into the weights."""
    if book is None:
        return (), 2, ()
    if not isinstance(book, dict) or not isinstance(book.get("entries", []), list):
        raise CardError(f"{where}: must be an object with a list of entries")
    depth = book.get("scan_depth", 2)
    if depth is None:
        depth = 2
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 1000:
        raise CardError(f"{where}.scan_depth must be a whole number from 0 to 1000, not {depth!r:.40}")
    entries: list[LoreEntry] = []
    texts: list[str] = []
    for i, raw in enumerate(book.get("entries", [])):
        entry = _entry(raw, f"{where}.entries[{i}]", name, i)
        if entry is None:
            continue
        if entry.keys or entry.constant:
            entries.append(entry)
        texts.append(entry.content)
    return tuple(entries), depth, tuple(texts)


def _entry(raw: Any, where: str, name: str, index: int) -> LoreEntry | None:
    """One lorebook entry (None: disabled or empty); CardError naming the field that is wrong."""
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), str):
        raise CardError(f"{where}.content is missing or not text")
    # V3 decorators ("@@depth 4", "@@activate") open an entry's text: taken out, not acted on
    content = "\n".join(line for line in raw["content"].splitlines() if not line.lstrip().startswith("@@"))
    if raw.get("enabled", True) is False or not content.strip():
        return None
    extensions: dict[str, Any] = raw["extensions"] if isinstance(raw.get("extensions"), dict) else {}

    def keys(field: str) -> tuple[str, ...]:
        value = raw.get(field) or []
        if isinstance(value, str):  # some editors write one key as a string
            value = [value]
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            raise CardError(f"{where}.{field} must be a list of strings")
        return tuple(k for k in value if k.strip())

    def number(field: str, default: int, *more: Any) -> int:
        value = next((v for v in (raw.get(field), *more) if v is not None), default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CardError(f"{where}.{field} must be a number, not {value!r:.40}")
        return int(value)

    primary, secondary = keys("keys"), keys("secondary_keys")
    case_sensitive = bool(raw.get("case_sensitive") or extensions.get("case_sensitive"))
    regex = bool(raw.get("use_regex"))
    for key in (*primary, *secondary):
        try:
            key_pattern(key, case_sensitive, regex)
        except re.error as exc:
            raise CardError(f"{where}: the key {key!r:.60} is not a regular expression that compiles ({exc})") from None
    order = number("insertion_order", 100)
    label = raw.get("name") or raw.get("comment") or f"entry {index}"
    return LoreEntry(
        content=_CHAR.sub(name, content).strip(), keys=primary, secondary_keys=secondary,
        selective=bool(raw.get("selective")), logic=number("selectiveLogic", 0, extensions.get("selectiveLogic")),
        constant=bool(raw.get("constant")), order=order, priority=number("priority", order),
        case_sensitive=case_sensitive, regex=regex, name=str(label)[:80],
        recurse=not bool(extensions.get("exclude_recursion")))


def parse_eliza(card: dict[str, Any], where: str = "character") -> tuple[Persona, tuple[str, ...]]:
    """An elizaOS character file: `name`, `bio`, `lore`, `messageExamples`, `style`,
    `adjectives`, `topics` (and `system`, `knowledge`). Its lore and knowledge become memories
    recalled by meaning; its example conversations the card's example dialogue."""
    name = card.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CardError(f"{where}: name is missing or empty")
    name = name.strip()

    def texts(field: str) -> list[str]:
        return _eliza_texts(card.get(field), f"{where}: {field}", skip_objects=field == "knowledge")

    style = card.get("style") or {}
    if not isinstance(style, dict):
        raise CardError(f"{where}: style must be an object of lists (all, chat, post)")
    manner = [line for key in ("all", "chat") for line in _eliza_list(style.get(key), f"{where}: style.{key}")]
    description = " ".join(texts("bio"))
    if manner:
        description += f"\n\nHow {name} talks: " + " ".join(_sentence(line) for line in manner)
    topics = texts("topics")
    system = card.get("system") or ""
    if not isinstance(system, str):
        raise CardError(f"{where}: system must be text")
    persona = Persona(
        name=name, source=where, description=_CHAR.sub(name, description).strip(),
        personality=", ".join(texts("adjectives")),
        scenario=f"{name} likes to talk about {', '.join(topics)}." if topics else "",
        examples=_eliza_examples(card.get("messageExamples"), name, f"{where}: messageExamples"),
        system_prompt=_CHAR.sub(name, system).strip())
    lore = tuple(_CHAR.sub(name, t) for t in texts("lore") + texts("knowledge"))
    return persona, lore


def _eliza_texts(value: Any, where: str, skip_objects: bool = False) -> list[str]:
    """Text or a list of texts (knowledge's {"path": ...} objects name files: left out)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if not isinstance(value, list):
        raise CardError(f"{where} must be text or a list of texts, not {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and skip_objects:
            continue
        if not isinstance(item, str):
            raise CardError(f"{where}[{i}] must be text, not {type(item).__name__}")
        if item.strip():
            out.append(item.strip())
    return out


def _eliza_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CardError(f"{where} must be a list of texts")
    return [v.strip() for v in value if v.strip()]


def _sentence(line: str) -> str:
    return line if line[-1:] in ".!?" else line + "."


def _eliza_examples(value: Any, name: str, where: str) -> str:
    """elizaOS example conversations as a card's example dialogue: each a <START> block, its
    lines {{user}}: or {{char}}: by who says them ({{user1}} and the like are the user)."""
    if value is None:
        return ""
    if not isinstance(value, list):
        raise CardError(f"{where} must be a list of conversations")
    blocks = []
    for i, conversation in enumerate(value):
        if not isinstance(conversation, list):
            raise CardError(f"{where}[{i}] must be a list of messages")
        lines = ["<START>"]
        for j, message in enumerate(conversation):
            content = message.get("content") if isinstance(message, dict) else None
            text = content.get("text") if isinstance(content, dict) else None
            speaker = message.get("name", message.get("user")) if isinstance(message, dict) else None
            if not isinstance(text, str) or not isinstance(speaker, str):
                raise CardError(f"{where}[{i}][{j}] needs a speaker (\"name\" or \"user\") and content.text")
            who = "{{char}}" if speaker.strip().lower() == name.lower() else "{{user}}"
            lines.append(f"{who}: {_NUMBERED_USER.sub('{{user}}', text.strip())}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


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
