"""The marketing touch of a page view, and the first/last-touch rules of a visitor's session.

Rules:
- a new visitor: first touch = last touch = this touch, and the touch starts the history;
- a returning visitor whose visit brings campaign data (UTM, click id or an external referrer): the last touch becomes
  this touch and it is appended to the history; the first touch never changes;
- a returning visitor on a direct visit (or an internal navigation): nothing changes;
- click ids: the latest value of each name is kept with the time it was first seen.

Functions return decisions as data; storing them is the caller's job.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from halo_proxy.tracking.campaign import Campaign
from halo_proxy.tracking.channel import DIRECT_MEDIUM, DIRECT_SOURCE, default_channel, derive_source_medium
from halo_proxy.tracking.models import Touch
from halo_proxy.tracking.referrer import Referrer
from halo_proxy.tracking.text import clean, redact

LANDING_PATH_MAX_LENGTH = 1024

# A repeat of the current last touch within this window (a reload of the landing page, back/forward navigation)
# is not a new touch.
REPEAT_WINDOW = timedelta(minutes=30)

ClickIds = Mapping[str, tuple[str, datetime]]


def touch_for_visit(
    *,
    campaign: Campaign,
    referrer: Referrer | None,
    landing_path: str,
    now: datetime,
) -> Touch:
    """The touch of one page view: source/medium (UTMs, else click id, referrer, or direct), GA4 channel, referrer,
    landing path (URL path without query, control characters removed, length-capped) and click ids."""
    source, medium = derive_source_medium(campaign, referrer)
    return Touch(
        at=now,
        source=source,
        medium=medium,
        campaign=campaign.campaign,
        term=campaign.term,
        content=campaign.content,
        utm_id=campaign.utm_id,
        channel=default_channel(source, medium, campaign.campaign),
        referrer_domain=referrer.domain if referrer is not None else None,
        referrer_url=referrer.url if referrer is not None else None,
        landing_path=redact(clean(landing_path, LANDING_PATH_MAX_LENGTH) or "/"),
        click_ids=campaign.click_ids,
    )


def is_campaign_touch(touch: Touch) -> bool:
    """True when the touch carries new campaign data: any UTM value, a click id, or an external referrer."""
    return bool(
        touch.click_ids
        or touch.referrer_domain
        or touch.campaign
        or touch.term
        or touch.content
        or touch.utm_id
        or (touch.source, touch.medium) != (DIRECT_SOURCE, DIRECT_MEDIUM)
    )


def _campaign_fields(touch: Touch) -> tuple:
    return (
        touch.source,
        touch.medium,
        touch.campaign,
        touch.term,
        touch.content,
        touch.utm_id,
        touch.referrer_domain,
        touch.click_ids,
    )


def same_campaign(a: Touch, b: Touch) -> bool:
    """Both touches carry the same campaign data (time, landing path and full referrer URL aside)."""
    return _campaign_fields(a) == _campaign_fields(b)


def campaign_fingerprint(touch: Touch) -> int:
    """A 64-bit digest of the touch's campaign data, small enough to keep next to a session id so that a repeat
    of the last touch can be recognised without reading it back. Python's own hash: stable within the process
    that keeps it, which is the only place it is compared."""
    return hash(_campaign_fields(touch))


class TouchAction(enum.Enum):
    NEW_SESSION = "new_session"  # store first touch, last touch, history entry
    UPDATE_LAST = "update_last"  # store last touch, history entry
    NONE = "none"  # nothing to store for the touch (click ids may still change)


@dataclass(frozen=True, slots=True)
class ClickIdUpdate:
    """Merged click ids and the names whose value changed (what to store)."""

    click_ids: dict[str, tuple[str, datetime]]
    changed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TouchDecision:
    action: TouchAction
    first_touch: Touch | None = None  # set only for NEW_SESSION
    last_touch: Touch | None = None  # set for NEW_SESSION and UPDATE_LAST
    history: Touch | None = None  # the touch to append to the history, if any
    click_ids: ClickIdUpdate = field(default_factory=lambda: ClickIdUpdate({}))

    @property
    def writes(self) -> bool:
        """Whether anything needs storing."""
        return self.action is not TouchAction.NONE or bool(self.click_ids.changed)


def merge_click_ids(existing: ClickIds, seen: Iterable[tuple[str, str]], at: datetime) -> ClickIdUpdate:
    """Keep the latest value of each click id with the time it was first seen.

    A new name or a different value replaces the stored one with time `at`, unless the stored one is more recent
    (writes that arrive out of order); the same value again keeps its original time.
    """
    merged = dict(existing)
    changed: list[str] = []
    for name, value in seen:
        current = merged.get(name)
        if current is not None and (current[0] == value or current[1] > at):
            continue
        merged[name] = (value, at)
        changed.append(name)
    return ClickIdUpdate(click_ids=merged, changed=tuple(changed))


def decide_touch(
    touch: Touch,
    *,
    new_visitor: bool,
    click_ids: ClickIds | None = None,
    last_touch: Touch | None = None,
    repeat_window: timedelta = REPEAT_WINDOW,
) -> TouchDecision:
    """What a page view changes in the visitor's session.

    `click_ids` are the session's stored click ids; `last_touch`, when the caller has it, lets a repeat of the same
    campaign within `repeat_window` (a reload of the landing page) count as no new touch.
    """
    update = merge_click_ids(click_ids or {}, touch.click_ids, touch.at)
    if new_visitor:
        return TouchDecision(
            action=TouchAction.NEW_SESSION, first_touch=touch, last_touch=touch, history=touch, click_ids=update
        )
    if not is_campaign_touch(touch):
        return TouchDecision(action=TouchAction.NONE, click_ids=update)
    if (
        last_touch is not None
        and same_campaign(touch, last_touch)
        and timedelta(0) <= touch.at - last_touch.at < repeat_window
    ):
        return TouchDecision(action=TouchAction.NONE, click_ids=update)
    return TouchDecision(action=TouchAction.UPDATE_LAST, last_touch=touch, history=touch, click_ids=update)

