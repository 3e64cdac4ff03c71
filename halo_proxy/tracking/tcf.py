"""Decoder for the core segment of an IAB TCF v2 consent string (the `euconsent-v2` cookie).

Only the fields the consent rules need are read; the layout is the one in the TCF v2 "Consent string and vendor
list formats" specification: base64url without padding, big-endian, bits read left to right.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

# (offset, bits) of the core segment fields.
VERSION = (0, 6)
CREATED = (6, 36)
LAST_UPDATED = (42, 36)
CMP_ID = (78, 12)
CMP_VERSION = (90, 12)
CONSENT_SCREEN = (102, 6)
CONSENT_LANGUAGE = (108, 12)
VENDOR_LIST_VERSION = (120, 12)
TCF_POLICY_VERSION = (132, 6)
IS_SERVICE_SPECIFIC = (138, 1)
USE_NON_STANDARD_TEXTS = (139, 1)
SPECIAL_FEATURE_OPT_INS = (140, 12)
PURPOSES_CONSENT = (152, 24)
PURPOSES_LI_TRANSPARENCY = (176, 24)
PURPOSE_ONE_TREATMENT = (200, 1)
PUBLISHER_CC = (201, 12)
MAX_VENDOR_ID = (213, 16)

# A core segment must at least reach the vendor section header.
_MIN_BITS = MAX_VENDOR_ID[0] + MAX_VENDOR_ID[1]
# Real strings are a few hundred bytes; anything far beyond is not a TC string.
_MAX_LENGTH = 8192
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class TCString:
    version: int
    created_ds: int  # deciseconds since the Unix epoch
    last_updated_ds: int
    cmp_id: int
    cmp_version: int
    consent_language: str
    vendor_list_version: int
    tcf_policy_version: int
    is_service_specific: bool
    purposes_consent: frozenset[int]  # purpose numbers 1..24 with consent
    purposes_li: frozenset[int]  # purpose numbers 1..24 with legitimate interest established
    publisher_cc: str

    def consent(self, purpose: int) -> bool:
        return purpose in self.purposes_consent

    def legitimate_interest(self, purpose: int) -> bool:
        return purpose in self.purposes_li

    @property
    def analytics(self) -> bool:
        """Store/access (1) and content measurement (8) by consent or legitimate interest."""
        return self.consent(1) and (self.consent(8) or self.legitimate_interest(8))

    @property
    def marketing(self) -> bool:
        """Store/access (1), ad profiles (3, 4) and ad measurement (7) by consent or legitimate interest."""
        return (
            self.consent(1)
            and self.consent(3)
            and self.consent(4)
            and (self.consent(7) or self.legitimate_interest(7))
        )


class _Bits:
    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self.length = len(data) * 8

    def read(self, field: tuple[int, int]) -> int:
        offset, size = field
        return (self._value >> (self.length - offset - size)) & ((1 << size) - 1)

    def flags(self, field: tuple[int, int]) -> frozenset[int]:
        value = self.read(field)
        size = field[1]
        return frozenset(n for n in range(1, size + 1) if value >> (size - n) & 1)

    def letters(self, field: tuple[int, int]) -> str:
        value = self.read(field)
        return chr(ord("A") + (value >> 6)) + chr(ord("A") + (value & 0x3F))


def decode_tc_string(value: str | None) -> TCString | None:
    """The core segment of a TC string, or None when the value is not a version 2 TC string."""
    if not value or len(value) > _MAX_LENGTH:
        return None
    core = value.strip().split(".", 1)[0]
    if not _BASE64URL.fullmatch(core) or len(core) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (binascii.Error, ValueError):
        return None
    bits = _Bits(data)
    if bits.length < _MIN_BITS or bits.read(VERSION) != 2:
        return None
    return TCString(
        version=2,
        created_ds=bits.read(CREATED),
        last_updated_ds=bits.read(LAST_UPDATED),
        cmp_id=bits.read(CMP_ID),
        cmp_version=bits.read(CMP_VERSION),
        consent_language=bits.letters(CONSENT_LANGUAGE),
        vendor_list_version=bits.read(VENDOR_LIST_VERSION),
        tcf_policy_version=bits.read(TCF_POLICY_VERSION),
        is_service_specific=bool(bits.read(IS_SERVICE_SPECIFIC)),
        purposes_consent=bits.flags(PURPOSES_CONSENT),
        purposes_li=bits.flags(PURPOSES_LI_TRANSPARENCY),
        publisher_cc=bits.letters(PUBLISHER_CC),
    )
