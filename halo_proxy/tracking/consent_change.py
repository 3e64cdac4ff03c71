"""What a consent change sent by the browser means (`POST /_halo/consent`), as data.

The browser reports `{analytics, marketing}`: from a banner's events (`t.js` listens to CookieYes, Cookiebot and
OneTrust) or from the page's own `HaloTrack.consent(...)`. The rule, pure (the opened `_halo` cookie and the
consent the request's cookies gave before are passed in):

- Marketing needs analytics, and `Sec-GPC: 1` turns marketing off.
- Analytics withdrawn: the session's identifiers go (email and phone links, IP, user agent, `_fbp`/`_fbc`), its
  `_halo` cookie and the Meta cookies are expired, and it is tracked no more.
- Granted to a visitor with a session: its consent is updated (and the cookie re-sealed) when it differs from what
  the cookie carries; marketing withdrawn clears what is kept for ad platforms.
- Granted to a visitor without a session: the page they are on is judged as a visit, which starts one.

HaloTrack's own consent cookie is set in every case, so that later page views use the choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from uuid import UUID

from halo_proxy.tracking.consent import SOURCE_HALOTRACK, own_consent_value
from halo_proxy.tracking.models import Consent
from halo_proxy.tracking.visit import STALE_KEY, consent_bits

# Closed set, usable as a metric label (halo_consent_changes_total{change}).
GRANTED = "granted"
WITHDRAWN = "withdrawn"
UPDATED = "updated"
UNCHANGED = "unchanged"
CHANGES = (GRANTED, WITHDRAWN, UPDATED, UNCHANGED)

META_COOKIES = ("_fbp", "_fbc")
_MARKETING = 2  # the marketing bit of `consent_bits`


class ConsentChange(NamedTuple):
    consent: Consent  # what is in force now
    change: str  # CHANGES
    own_value: str  # HaloTrack's consent cookie
    withdraw: UUID | None = None  # the session whose identifiers are deleted
    update: UUID | None = None  # the session whose consent is updated
    seal_state: int | None = None  # re-seal `_halo` for `update` with these bits
    start: bool = False  # judge the page as a visit: a new session
    expire: tuple[str, ...] = ()  # cookies to expire (those the visitor has)


def effective_consent(analytics: bool, marketing: bool, gpc: bool) -> Consent:
    """A choice sent by the browser as it applies: marketing needs analytics, GPC turns marketing off."""
    return Consent(analytics=analytics, marketing=analytics and marketing and not gpc, explicit=True, gpc=gpc,
                   source=SOURCE_HALOTRACK)


def decide_consent_change(analytics: bool, marketing: bool, gpc: bool, opened: tuple[UUID, int] | None,
                          previous: Consent, cookies: Mapping[str, str], cookie_name: str) -> ConsentChange:
    consent = effective_consent(analytics, marketing, gpc)
    own = own_consent_value(consent.analytics, consent.marketing)
    if not consent.analytics:
        had = opened is not None or previous.analytics or previous.marketing
        expire = tuple(name for name in (cookie_name, *META_COOKIES) if name in cookies)
        return ConsentChange(consent, WITHDRAWN if had else UNCHANGED, own,
                             withdraw=opened[0] if opened is not None else None, expire=expire)
    if opened is None:
        return ConsentChange(consent, GRANTED, own, start=True)
    session_id, old_state = opened
    state = consent_bits(consent)
    expire = tuple(name for name in META_COOKIES if name in cookies) if not consent.marketing else ()
    if state == old_state & ~STALE_KEY:  # the same consent (the cookie may be re-sealed by the next page view)
        return ConsentChange(consent, UNCHANGED, own, expire=expire)
    change = UPDATED if old_state & 1 else GRANTED
    if old_state & _MARKETING and not consent.marketing:
        change = UPDATED
    return ConsentChange(consent, change, own, update=session_id, seal_state=state, expire=expire)
