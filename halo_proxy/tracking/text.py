"""Small helpers that make request-supplied text safe to store: no control characters, bounded length."""

from __future__ import annotations

import re

# C0 controls (NUL is refused by PostgreSQL text columns), DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value: str | None, limit: int) -> str | None:
    """Trimmed value without control characters, cut to `limit` characters; None when nothing is left."""
    if value is None:
        return None
    value = _CONTROL.sub("", value).strip()
    if not value:
        return None
    return value[:limit]


def has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None
