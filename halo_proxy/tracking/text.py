"""Small helpers that make request-supplied text safe to store: no control characters, bounded length."""

from __future__ import annotations

import re

# C0 controls (NUL is refused by PostgreSQL text columns), DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(value: str) -> str:
    """`value` as storable Unicode. aiohttp hands over header bytes that are not UTF-8 as lone surrogates
    ("\\udcff"), which neither PostgreSQL nor an encryption of the text accepts: they become U+FFFD."""
    if value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)


def clean(value: str | None, limit: int) -> str | None:
    """Trimmed value without control characters, cut to `limit` characters; None when nothing is left."""
    if value is None:
        return None
    value = _CONTROL.sub("", valid_text(value)).strip()
    if not value:
        return None
    return value[:limit]


def has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


# Personal data that visitors' URLs carry by accident (a form that GETs `/thanks/jan@example.cz`, a referrer
# path with a phone number): replaced before anything is stored in plain text.
_EMAIL = re.compile(r"[^\s/?#&=;:@]+@[^\s/?#&=;:@]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<![\w%])\+?\(?\d[\d\s().-]{7,}\d(?![\w%])")
REDACTED_EMAIL = "[email]"
REDACTED_PHONE = "[phone]"


def redact(value: str, *, phones: bool = True) -> str:
    """`value` with email addresses (and, with `phones`, runs of nine or more digits that may be a phone
    number, with `+ ( ) . -` or spaces between) replaced by placeholders. Cheap when there is nothing to find."""
    if "@" in value:
        value = _EMAIL.sub(REDACTED_EMAIL, value)
    if phones and sum(c.isdigit() for c in value) >= 9:
        value = _PHONE.sub(lambda m: REDACTED_PHONE if sum(c.isdigit() for c in m.group()) >= 9 else m.group(),
                           value)
    return value
