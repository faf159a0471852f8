"""Personal data in what a viewer says about themselves: never trained into the character's
weights, whoever approves (docs/security.md). Recall may still bring it up in a reply's prompt,
as it does any memory; `omoide memory delete` removes it.

Patterns, not a classifier: they catch the common forms and miss clever ones, and say which kind
they found so an operator can see why a fact was held back."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*")  # x@y.z; x@y too (a fact cut at its dot)
_PHONE = re.compile(r"(?<!\w)(?:\+?\d[\d ().-]{6,}\d)(?!\w)")
_STREET = re.compile(
    r"\b\d{1,5}[a-z]?\s+(?:[A-Z][\w'-]*\s+){1,3}(?:street|st|avenue|ave|road|rd|lane|ln|boulevard|blvd|drive|dr"
    r"|court|ct|way|place|pl|terrace|close|crescent|square|sq|strasse|straße|rue|calle)\b\.?", re.IGNORECASE)
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){13,19}(?!\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){3,7}\b")
_RELATION = (r"(?:friend|brother|sister|mom|mum|mother|dad|father|boss|neighbou?r|teacher|wife|husband|"
             r"girlfriend|boyfriend|partner|cousin|uncle|aunt|son|daughter|coworker|colleague|roommate)")
_NAMED = re.compile(rf"\b{_RELATION}(?:'s name)?\s+(?:is\s+|called\s+|named\s+)?[A-Z][a-z]+\s+[A-Z][a-z]+")


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def personal_data(text: str) -> str | None:
    """The kind of personal data in `text` ("an email address", ...), or None."""
    if _EMAIL.search(text):
        return "an email address"
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn(digits):
            return "a payment card number"
    if _IBAN.search(text):
        return "a bank account number"
    if any(len(re.sub(r"\D", "", m.group(0))) >= 7 for m in _PHONE.finditer(text)):
        return "a phone number"
    if _STREET.search(text):
        return "a street address"
    if _NAMED.search(text):
        return "someone else's full name"
    return None
