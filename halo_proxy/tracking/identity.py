"""Normalisation of the identifiers a visitor gives us: email addresses and phone numbers.

The normalised forms are what blind indexes are computed over, so two spellings of one address or number
must come out identical. Error messages describe the problem and never repeat the value.
"""

from __future__ import annotations

import phonenumbers

__all__ = ["IdentityError", "normalise_email", "normalise_phone"]

EMAIL_MAX_CHARS = 254
EMAIL_LOCAL_MAX_CHARS = 64
# Longer than any real number with formatting; keeps the parser away from pathological input.
PHONE_MAX_CHARS = 64


class IdentityError(ValueError):
    """An identifier that cannot be used. `field` names it (``email`` or ``phone``), `detail` says why."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


def normalise_email(text: str) -> str:
    """Trimmed and lowercased email address; raises IdentityError(field="email") unless it looks like one.

    Looks like one: at most 254 characters, exactly one ``@``, a local part of 1 to 64 characters, a domain
    of dot-separated non-empty labels (at least two), no whitespace or control characters.
    """
    if not isinstance(text, str):
        raise IdentityError("email", "email must be a string")
    value = text.strip().lower()
    if not value:
        raise IdentityError("email", "email is empty")
    if len(value) > EMAIL_MAX_CHARS:
        raise IdentityError("email", f"email is longer than {EMAIL_MAX_CHARS} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise IdentityError("email", "email contains spaces or control characters")
    if value.count("@") != 1:
        raise IdentityError("email", "email must contain exactly one @")
    local, _, domain = value.partition("@")
    if not local:
        raise IdentityError("email", "email has nothing before the @")
    if len(local) > EMAIL_LOCAL_MAX_CHARS:
        raise IdentityError("email", f"email has more than {EMAIL_LOCAL_MAX_CHARS} characters before the @")
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels):
        raise IdentityError("email", "email domain must be a dotted name such as example.com")
    return value


def normalise_phone(text: str, default_region: str | None) -> str:
    """The number in E.164 (``+420601234567``); raises IdentityError(field="phone") unless it is a valid number.

    A number without a country code (no ``+`` or international prefix) is read as a number of
    `default_region` (ISO 3166 alpha-2, e.g. ``CZ``); without a region such a number is rejected.
    """
    if not isinstance(text, str):
        raise IdentityError("phone", "phone must be a string")
    value = text.strip()
    if not value:
        raise IdentityError("phone", "phone is empty")
    if len(value) > PHONE_MAX_CHARS:
        raise IdentityError("phone", f"phone is longer than {PHONE_MAX_CHARS} characters")
    region = (
        default_region.strip().upper() if isinstance(default_region, str) and default_region.strip() else None
    )
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as err:
        if err.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            detail = "phone has no country code and no known default region applies"
        else:
            detail = "phone is not a phone number"
        raise IdentityError("phone", detail) from None
    if not phonenumbers.is_possible_number(number):
        raise IdentityError("phone", "phone has the wrong number of digits")
    if not phonenumbers.is_valid_number(number):
        raise IdentityError("phone", "phone is not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
