"""Attribution of a conversion to the touches of the visitor's session.

Rules (first and last touch within a lookback window, as Google Ads and GA4 apply their click windows):

- Eligible touches are the matched session's touches at or before the conversion and no older than
  `lookback_days` before it. A touch outside the window earns no credit, so the first touch is the earliest
  *eligible* touch, not the session's very first visit: a visitor who first came two years ago and returned
  from a campaign last week converted because of last week. When every touch lies outside the window the
  conversion stays matched (`match_type` and `session_id` are kept) but has no first or last touch.
- The last touch is the latest eligible touch that carries campaign data (UTM, click id or an external referrer);
  if none does, the latest eligible touch.
- `days_to_convert` counts whole days (24-hour periods) from the first touch to the conversion: first touch
  on day 1 at 09:00, conversion on day 3 at 09:00 gives 2.
- `click_ids` holds the latest value of each click id among the eligible touches.
- `touches` is the eligible list, oldest first, so reports can apply multi-touch models later; a session with
  more than `MAX_TOUCHES` of them keeps its first and the most recent ones.

`attribution_json` is the contract's response shape; `attribution_record` the fuller form for storage, which
`attribution_from_record` reads back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from halo_proxy.tracking.models import CLICK_ID_PARAMS, MATCH_TYPES, TOUCH_TEXT_FIELDS, Attribution, Touch
from halo_proxy.tracking.touch import is_campaign_touch

__all__ = [
    "MAX_TOUCHES",
    "RECORD_VERSION",
    "attribute",
    "attribution_from_record",
    "attribution_json",
    "attribution_record",
    "choose_session",
    "last_touch_of",
]

MAX_TOUCHES = 200
RECORD_VERSION = 1

_CLICK_ID_ORDER = {name: i for i, name in enumerate(CLICK_ID_PARAMS)}

SessionT = TypeVar("SessionT")


def _aware(name: str, at: datetime) -> None:
    if at.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def attribute(
    touches: Sequence[Touch],
    *,
    match_type: str,
    session_id: str | None,
    converted_at: datetime,
    lookback_days: int,
) -> Attribution:
    """The attribution of a conversion at `converted_at` to the matched session's `touches` (any order)."""
    if match_type not in MATCH_TYPES:
        raise ValueError(f"match_type must be one of {MATCH_TYPES}")
    if lookback_days < 0:
        raise ValueError("lookback_days must not be negative")
    _aware("converted_at", converted_at)
    if match_type == "none" or session_id is None:
        return Attribution()

    since = converted_at - timedelta(days=lookback_days)
    eligible = sorted((t for t in touches if since <= t.at <= converted_at), key=lambda t: t.at)
    if not eligible:
        return Attribution(match_type=match_type, session_id=session_id)
    if len(eligible) > MAX_TOUCHES:
        eligible = [eligible[0], *eligible[-(MAX_TOUCHES - 1) :]]

    first = eligible[0]
    last = last_touch_of(eligible)
    latest: dict[str, str] = {}
    for touch in eligible:
        latest.update(touch.click_ids)
    click_ids = _ordered(latest)
    return Attribution(
        match_type=match_type,
        session_id=session_id,
        first_touch=first,
        last_touch=last,
        days_to_convert=max(0, (converted_at - first.at).days),
        click_ids=click_ids,
        touches=tuple(eligible),
    )


def last_touch_of(touches: Sequence[Touch]) -> Touch | None:
    """The last touch of an eligible list (oldest first): the latest that carries campaign data, else the latest;
    None for no touches. The attribution models' `last_touch` follows the same rule (tracking/credit.py)."""
    if not touches:
        return None
    return next((t for t in reversed(touches) if is_campaign_touch(t)), touches[-1])


def _ordered(click_ids: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Click ids in their stored order (`CLICK_ID_PARAMS`, then other names alphabetically)."""
    return tuple(
        sorted(
            ((str(k), str(v)) for k, v in click_ids.items()),
            key=lambda item: (_CLICK_ID_ORDER.get(item[0], len(_CLICK_ID_ORDER)), item[0]),
        )
    )


def choose_session(candidates: Sequence[tuple[SessionT, datetime | None]]) -> SessionT | None:
    """Among several sessions of one person, each with the time of its latest touch before the conversion (None
    when it has none), the one touched most recently; None when no session has a touch before the conversion.
    Ties go to the earlier candidate."""
    best: SessionT | None = None
    best_at: datetime | None = None
    for session_id, at in candidates:
        if at is None:
            continue
        if best_at is None or at > best_at:
            best, best_at = session_id, at
    return best


# -- serialisation ---------------------------------------------------------------------------------------------------


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _touch_summary(touch: Touch | None) -> dict[str, Any] | None:
    if touch is None:
        return None
    return {
        "source": touch.source,
        "medium": touch.medium,
        "campaign": touch.campaign,
        "channel": touch.channel,
        "at": _iso(touch.at),
    }


def attribution_json(attribution: Attribution) -> dict[str, Any]:
    """The contract's ``attribution`` object: first and last touch (null when unmatched), days to convert and
    click ids."""
    return {
        "first_touch": _touch_summary(attribution.first_touch),
        "last_touch": _touch_summary(attribution.last_touch),
        "days_to_convert": attribution.days_to_convert,
        "click_ids": dict(attribution.click_ids),
    }


def _touch_record(touch: Touch) -> dict[str, Any]:
    record: dict[str, Any] = {"at": _iso(touch.at)}
    for name in TOUCH_TEXT_FIELDS:
        record[name] = getattr(touch, name)
    record["click_ids"] = dict(touch.click_ids)
    return record


def _index(touches: Sequence[Touch], touch: Touch | None) -> int | None:
    if touch is None:
        return None
    for i, candidate in enumerate(touches):
        if candidate == touch:
            return i
    return None


def attribution_record(attribution: Attribution) -> dict[str, Any]:
    """Everything about the attribution, JSON-ready, for storage: match, session, days to convert, click ids
    and every eligible touch (referrer, landing path and click ids included), with the positions of the first
    and last touch in that list."""
    touches = attribution.touches
    return {
        "v": RECORD_VERSION,
        "match_type": attribution.match_type,
        "session_id": None if attribution.session_id is None else str(attribution.session_id),
        "days_to_convert": attribution.days_to_convert,
        "click_ids": dict(attribution.click_ids),
        "first_touch": _touch_record(attribution.first_touch) if attribution.first_touch else None,
        "last_touch": _touch_record(attribution.last_touch) if attribution.last_touch else None,
        "first_touch_index": _index(touches, attribution.first_touch),
        "last_touch_index": _index(touches, attribution.last_touch),
        "touches": [_touch_record(t) for t in touches],
    }


def _touch_from_record(data: Mapping[str, Any]) -> Touch:
    click_ids = data.get("click_ids") or {}
    return Touch(
        at=datetime.fromisoformat(data["at"]),
        source=data.get("source"),
        medium=data.get("medium"),
        campaign=data.get("campaign"),
        term=data.get("term"),
        content=data.get("content"),
        utm_id=data.get("utm_id"),
        channel=data.get("channel") or "Direct",
        referrer_domain=data.get("referrer_domain"),
        referrer_url=data.get("referrer_url"),
        landing_path=data.get("landing_path") or "/",
        click_ids=_ordered(click_ids),
    )


def attribution_from_record(record: Mapping[str, Any]) -> Attribution:
    """The Attribution an `attribution_record` was made from (to answer a repeated delivery, or for reports).

    Click ids come back in their stored order whatever order the keys were kept in (jsonb reorders them)."""
    first = record.get("first_touch")
    last = record.get("last_touch")
    return Attribution(
        match_type=record.get("match_type") or "none",
        session_id=record.get("session_id"),
        first_touch=_touch_from_record(first) if first else None,
        last_touch=_touch_from_record(last) if last else None,
        days_to_convert=record.get("days_to_convert"),
        click_ids=_ordered(record.get("click_ids") or {}),
        touches=tuple(_touch_from_record(t) for t in record.get("touches") or ()),
    )
