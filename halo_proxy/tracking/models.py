"""Plain value types shared by the tracking rules, storage and the app layer.

Everything here is immutable and free of I/O so that it can be built in tests from literals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Click-id URL parameters we keep, in the order they are stored and reported. Values are kept verbatim
# (they are case-sensitive).
CLICK_ID_PARAMS: tuple[str, ...] = (
    "gclid",
    "gbraid",
    "wbraid",
    "dclid",
    "fbclid",
    "ttclid",
    "msclkid",
    "li_fat_id",
    "twclid",
    "ScCid",
    "epik",
    "rdt_cid",
)

UTM_PARAMS: tuple[str, ...] = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "utm_id",
)


@dataclass(frozen=True, slots=True)
class Consent:
    """What the visitor allowed. `explicit` is True when a CMP recorded a user choice.

    `source` names where the decision came from: a CMP name, "gpc", or "unknown" (the tenant default).
    """

    analytics: bool
    marketing: bool
    explicit: bool = False
    gpc: bool = False
    source: str = "unknown"

    @property
    def state(self) -> str:
        """Closed label set for metrics: granted | analytics_only | marketing_only | denied."""
        if self.analytics and self.marketing:
            return "granted"
        if self.analytics:
            return "analytics_only"
        if self.marketing:
            return "marketing_only"
        return "denied"


@dataclass(frozen=True, slots=True)
class Device:
    device_type: str  # mobile | tablet | desktop | other
    browser: str | None
    os: str | None


@dataclass(frozen=True, slots=True)
class Geo:
    country: str | None = None
    region: str | None = None
    city: str | None = None


# The text fields of a Touch, in storage order (its `at` and `click_ids` are handled on their own).
TOUCH_TEXT_FIELDS: tuple[str, ...] = (
    "source", "medium", "campaign", "term", "content", "utm_id", "channel", "referrer_domain", "referrer_url",
    "landing_path",
)


@dataclass(frozen=True, slots=True)
class Touch:
    """One marketing touch: what brought the visitor on this page view."""

    at: datetime
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None
    utm_id: str | None = None
    channel: str = "Direct"
    referrer_domain: str | None = None
    referrer_url: str | None = None
    landing_path: str = "/"
    click_ids: tuple[tuple[str, str], ...] = field(default=())

    @property
    def click_id_map(self) -> dict[str, str]:
        return dict(self.click_ids)


# ---------------------------------------------------------------------------------------------------------------
# Conversions (leads and orders).

CONVERSION_KINDS: tuple[str, ...] = ("lead", "order")
MATCH_TYPES: tuple[str, ...] = ("session", "email", "phone", "none")
CONVERSION_SOURCES: tuple[str, ...] = ("form", "api", "shopify", "stripe")


@dataclass(frozen=True, slots=True)
class ConversionInput:
    """A lead or an order as received, validated and normalised, before matching and storage.

    `external_id` is the sender's idempotency key (`event_id` of a lead, `order_id` of an order, the Shopify
    webhook id or the Stripe event id). `session_ref` is the raw session reference from the body (a `_halo`
    cookie value or the id `HaloTrack.getSessionId()` returned). `email` is trimmed and lowercased; `phone` is
    E.164. `value` is a decimal string so no float rounding touches money.
    """

    kind: str
    source: str
    external_id: str | None = None
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    message: str | None = None
    form_type: str | None = None
    value: str | None = None
    currency: str | None = None
    session_ref: str | None = None
    consent_marketing: bool | None = None
    fields: dict | None = None
    items: list | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = None
    event_source_url: str | None = None
    ga_client_id: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a conversion is credited to: the matched session's touches within the lookback window."""

    match_type: str = "none"
    session_id: str | None = None
    first_touch: Touch | None = None
    last_touch: Touch | None = None
    days_to_convert: int | None = None
    click_ids: tuple[tuple[str, str], ...] = ()
    touches: tuple[Touch, ...] = ()
