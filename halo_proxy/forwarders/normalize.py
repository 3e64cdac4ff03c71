"""Per-platform normalisation and SHA-256 hashing of customer data.

Each `*_` normaliser returns the plain normalised form a platform documents (or None when nothing usable
remains); `hashed` turns that into lowercase hex SHA-256. A value that already is 64 hex characters is taken
as a hash made elsewhere and passes through (lowercased), never hashed twice.

Never hashed, by any platform: IP address, user agent, fbc / fbp, gclid / gbraid / wbraid, ttclid, ttp.
Those are sent raw and have no function here.

Phone formats differ: Meta wants digits with the country code and no ``+``; Google (GA4, Data Manager) and
TikTok want E.164 with the ``+``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable

import phonenumbers

__all__ = [
    "e164_phone",
    "google_email",
    "hashed",
    "is_sha256_hex",
    "meta_city",
    "meta_country",
    "meta_email",
    "meta_external_id",
    "meta_name",
    "meta_phone",
    "meta_state",
    "meta_zip",
    "sha256_hex",
    "tiktok_email",
    "tiktok_external_id",
]

_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_US_ZIP_RE = re.compile(r"^(\d{5})(?:[\s-]?\d{4})?$")
_ALPHA2_RE = re.compile(r"^[a-z]{2}$")
_PHONE_MAX_CHARS = 64


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of `value`."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def is_sha256_hex(value: object) -> bool:
    """True for a 64-character hex string (either case)."""
    return isinstance(value, str) and bool(_HEX64_RE.match(value))


def hashed(normalise: Callable[[str], str | None], value: str | None) -> str | None:
    """SHA-256 hex of `normalise(value)`; a 64-hex `value` passes through lowercased; None when nothing is left."""
    if value is None:
        return None
    text = value.strip()
    if is_sha256_hex(text):
        return text.lower()
    norm = normalise(text)
    return sha256_hex(norm) if norm else None


def _strip_punctuation(text: str) -> str:
    """Drops Unicode punctuation and symbols; letters (accents kept), digits and spaces stay."""
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))


# -- Meta Conversions API (customer information parameters) ----------------------------------------------


def meta_email(raw: str) -> str | None:
    """Trimmed, lowercased: ``John_Smith@gmail.com`` -> ``john_smith@gmail.com``."""
    value = raw.strip().lower()
    return value if "@" in value else None


def meta_phone(raw: str, default_region: str | None = None) -> str | None:
    """Digits with the country code, no ``+`` and no leading zeros: ``(650)555-1212`` (US) -> ``16505551212``.

    A number without a country code is read in `default_region`; None when it cannot be a phone number.
    """
    e164 = e164_phone(raw, default_region)
    return e164[1:] if e164 else None


def meta_name(raw: str) -> str | None:
    """First or last name: lowercase, no punctuation, accents kept (``Valéry`` -> ``valéry``)."""
    value = " ".join(_strip_punctuation(raw.lower()).split())
    return value or None


def meta_city(raw: str) -> str | None:
    """Lowercase letters only, no spaces, digits or punctuation: ``New York`` -> ``newyork``."""
    value = "".join(ch for ch in raw.lower() if ch.isalpha())
    return value or None


def meta_state(raw: str) -> str | None:
    """Lowercase, no punctuation or spaces: ``CA`` -> ``ca``; outside the US the region name the same way."""
    return meta_city(raw)


def meta_zip(raw: str, country: str | None = None) -> str | None:
    """Lowercase, no spaces or dashes; US (or an unknown country with a US-shaped code): the first 5 digits.

    ``94035-1234`` -> ``94035``; ``M1 1AE`` (GB) -> ``m11ae``.
    """
    value = raw.strip().lower()
    cc = (country or "").strip().lower()
    match = _US_ZIP_RE.match(value)
    if match and cc in ("", "us"):
        return match.group(1)
    value = re.sub(r"[\s-]+", "", value)
    return value or None


def meta_country(raw: str) -> str | None:
    """Lowercase ISO 3166-1 alpha-2: ``US`` -> ``us``; None for anything else."""
    value = raw.strip().lower()
    return value if _ALPHA2_RE.match(value) else None


def meta_external_id(raw: str) -> str | None:
    """Trimmed and lowercased, the same form TikTok uses, so one id hashes alike on every channel."""
    return raw.strip().lower() or None


# -- Google: GA4 Measurement Protocol user_data and Data Manager user identifiers -------------------------


def google_email(raw: str) -> str | None:
    """Lowercase, no spaces; for gmail.com / googlemail.com also no dots and no ``+tag`` in the local part.

    ``John.Smith+ads@Gmail.com`` -> ``johnsmith@gmail.com``; other domains keep dots and tags.
    """
    value = "".join(raw.split()).lower()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        return None
    if domain in ("gmail.com", "googlemail.com"):
        local = local.split("+", 1)[0].replace(".", "")
        if not local:
            return None
    return f"{local}@{domain}"


def e164_phone(raw: str, default_region: str | None = None) -> str | None:
    """E.164 with the leading ``+`` (Google, TikTok): ``(650)555-1212`` (US) -> ``+16505551212``.

    Uses libphonenumber's length rules only (not its allocation tables), so numbers in newly opened ranges
    still pass. None when the text cannot be a phone number.
    """
    value = raw.strip()
    if not value or len(value) > _PHONE_MAX_CHARS:
        return None
    region = default_region.strip().upper() if default_region and default_region.strip() else None
    if value.startswith("00"):
        value = "+" + value[2:]
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# -- TikTok Events API ------------------------------------------------------------------------------------


def tiktok_email(raw: str) -> str | None:
    """Trimmed and lowercased."""
    value = raw.strip().lower()
    return value if "@" in value else None


def tiktok_external_id(raw: str) -> str | None:
    """Trimmed and lowercased."""
    return raw.strip().lower() or None
