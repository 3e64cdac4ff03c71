"""Builds TCF v2 core segments bit by bit, following the field table of the TCF v2 string format, independently of
the decoder under test."""

from __future__ import annotations

import base64


def _field(value: int, bits: int) -> str:
    assert 0 <= value < (1 << bits)
    return format(value, f"0{bits}b")


def _flags(numbers: set[int], bits: int) -> str:
    return "".join("1" if n in numbers else "0" for n in range(1, bits + 1))


def _letters(code: str) -> str:
    return "".join(_field(ord(c) - ord("A"), 6) for c in code)


def build_core(
    *,
    version: int = 2,
    created_ds: int = 17_000_000_000,
    last_updated_ds: int = 17_000_000_000,
    cmp_id: int = 300,
    cmp_version: int = 1,
    consent_screen: int = 1,
    language: str = "EN",
    vendor_list_version: int = 80,
    policy_version: int = 4,
    service_specific: bool = True,
    purposes_consent: set[int] = frozenset(),
    purposes_li: set[int] = frozenset(),
    publisher_cc: str = "DE",
    vendor_consents: set[int] = frozenset({1}),
) -> str:
    bits = "".join(
        [
            _field(version, 6),  # 0
            _field(created_ds, 36),  # 6
            _field(last_updated_ds, 36),  # 42
            _field(cmp_id, 12),  # 78
            _field(cmp_version, 12),  # 90
            _field(consent_screen, 6),  # 102
            _letters(language),  # 108
            _field(vendor_list_version, 12),  # 120
            _field(policy_version, 6),  # 132
            _field(int(service_specific), 1),  # 138
            "0",  # 139 UseNonStandardTexts
            _field(0, 12),  # 140 SpecialFeatureOptIns
            _flags(set(purposes_consent), 24),  # 152
            _flags(set(purposes_li), 24),  # 176
            "0",  # 200 PurposeOneTreatment
            _letters(publisher_cc),  # 201
        ]
    )
    assert len(bits) == 213
    max_vendor = max(vendor_consents, default=0)
    bits += _field(max_vendor, 16) + "0" + _flags(set(vendor_consents), max_vendor)  # bit-field vendor consents
    bits += _field(0, 16) + "0"  # no vendor legitimate interests
    bits += _field(0, 12)  # no publisher restrictions
    bits += "0" * (-len(bits) % 8)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
