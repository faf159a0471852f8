"""JSON documents a game asks for, checked and bounded without a model: `validate` (jsonschema,
with `pattern` under a time limit), `tighten` (bounds where a schema leaves them open, so a grammar
cannot run past max_new_tokens), `grammar` (the llguidance grammar of a schema). Every backend
uses these; persona_model/constrained.py adds the token masks of the local model.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import llguidance
import regex

PATTERN_TIMEOUT_S = 0.05  # a game's `pattern` that takes longer to match is a failed match
MAX_STRING = 200  # characters, for a string the schema leaves unbounded
MAX_ITEMS = 16  # for an array the schema leaves unbounded
INT_BOUND = 10**9  # for an integer the schema leaves unbounded



class SchemaError(ValueError):
    """A schema the grammar engine cannot use; the message says why."""


class TruncatedJson(ValueError):
    """The model ran out of tokens before the document was complete."""


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Any:
    """`pattern`, matched by the `regex` engine with a time limit: a game's pattern that
    backtracks for ever (a ReDoS) fails the match instead of freezing the character."""
    if not validator.is_type(instance, "string") or not isinstance(pattern, str):
        return
    try:
        found = regex.search(pattern, instance, timeout=PATTERN_TIMEOUT_S)
    except TimeoutError:
        yield jsonschema.ValidationError(f"pattern {pattern[:60]!r} took too long to match")
        return
    except regex.error as exc:
        yield jsonschema.ValidationError(f"pattern {pattern[:60]!r} is not a valid regular expression ({exc})")
        return
    if found is None:
        yield jsonschema.ValidationError(f"{instance[:60]!r} does not match {pattern[:60]!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


def validate(document: Any, schema: Any) -> None:
    """jsonschema's validation (ValidationError), with `pattern` under a time limit."""
    error = jsonschema.exceptions.best_match(_Validator(schema).iter_errors(document))
    if error is not None:
        raise error


def tighten(schema: Any) -> Any:  # noqa: C901 (one branch per JSON Schema keyword)
    """A copy of `schema` with bounds where it has none: every document valid under the copy is
    valid under the original."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if "string" in kinds and "maxLength" not in node and "enum" not in node and "const" not in node \
                and "pattern" not in node and "format" not in node:
            node["maxLength"] = MAX_STRING
        if "array" in kinds and "maxItems" not in node:
            node["maxItems"] = max(MAX_ITEMS, int(node.get("minItems", 0)))
        if "integer" in kinds:
            node.setdefault("minimum", -INT_BOUND)
            node.setdefault("maximum", INT_BOUND)
        if ("object" in kinds or "properties" in node) and "additionalProperties" not in node:
            node["additionalProperties"] = False  # only the properties it names: no free-form keys
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    walk(sub)
            elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"):
                walk(value)

    walk(out)
    return out


def grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar of a JSON schema (compact output), or SchemaError."""
    try:
        text = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False})
    except Exception as exc:  # noqa: BLE001 - the engine's own message says what it cannot do
        raise SchemaError(str(exc)) from None
    problem = llguidance.LLMatcher.validate_grammar(text)  # "" when the engine can use it
    if problem:
        raise SchemaError(str(problem))
    return str(text)
