"""Custom browser events (`HaloTrack.track(name, props)`): what a valid one is. Pure.

`name` matches `^[a-z][a-z0-9_]{0,63}$`; `props` is a JSON object of at most 2 KB once serialised and 16 levels
deep (it may hold personal data: storage encrypts it). Anything else is an `InputError` naming the field (HTTP 422).
"""

from __future__ import annotations

import json
import re
from typing import Any

from halo_proxy.tracking.conversion import InputError

NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
PROPS_MAX_BYTES = 2048
PROPS_MAX_DEPTH = 16  # objects and arrays within props; deeper is no event anyone reads
FIELDS = frozenset({"name", "props"})


def parse_event(data: dict[str, Any]) -> tuple[str, str | None]:
    """(name, props as compact JSON or None) of a decoded event body."""
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise InputError("unknown_field", f"Unknown field {unknown[0]}; send name and props.", unknown[0])
    name = data.get("name")
    if name is None or name == "":
        raise InputError("missing_field", "Send the event's name.", "name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InputError("invalid_field", "name must be 1-64 characters: a-z first, then a-z, 0-9 or _.", "name")
    props = data.get("props")
    if props is None:
        return name, None
    if not isinstance(props, dict):
        raise InputError("invalid_field", "props must be a JSON object.", "props")
    if _depth(props) > PROPS_MAX_DEPTH:
        raise InputError("invalid_field", f"props may nest at most {PROPS_MAX_DEPTH} levels.", "props")
    text = json.dumps(props, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode("utf-8")) > PROPS_MAX_BYTES:
        raise InputError("invalid_field", f"props must be at most {PROPS_MAX_BYTES} bytes as JSON.", "props")
    return name, text


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in `value`, counted without recursion (a body may nest 1,000 deep)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
        if depth > PROPS_MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
