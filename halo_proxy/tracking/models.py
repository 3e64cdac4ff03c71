"""Plain value types shared by the tracking rules, storage and the app layer.

Everything here is immutable and free of I/O so that it can be built in tests from literals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from uuid import UUID

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


# -- what a page view decides to record (tracking.visit), written by storage's write queue -----------


@dataclass(frozen=True, slots=True)
class SessionWrite:
    """One tracked page view to record, handed over by the proxy's background writer.

    `is_new`: the proxy created this session on this page view. The touch is what brought the visitor.
    `ip_enc`, `user_agent_enc`, `fbp` and `fbc` are kept only with marketing consent: without it they are
    dropped, and stored ones are cleared. `at` is the time of the page view (default: the touch's time).
    """

    tenant_id: str
    session_id: UUID
    is_new: bool
    touch: Touch
    device: Device
    geo: Geo
    consent: Consent
    ip_hash: bytes | None = None
    ip_enc: bytes | None = None
    user_agent_enc: bytes | None = None
    fbp: str | None = None
    fbc: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AnonEvent:
    """An anonymous aggregate for consent-denied visits: `count` visits on `day` with these dimensions."""

    tenant_id: str
    day: date
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    referrer_domain: str | None = None
    path: str | None = None
    channel: str | None = None
    count: int = 1

    @property
    def key(self) -> tuple[str, date, str, str, str, str, str, str]:
        return (
            self.tenant_id,
            self.day,
            self.utm_source or "",
            self.utm_medium or "",
            self.utm_campaign or "",
            self.referrer_domain or "",
            self.path or "",
            self.channel or "",
        )


@dataclass(frozen=True, slots=True)
class ConsentUpdate:
    """A returning visitor's consent changed on a visit without campaign data."""

    tenant_id: str
    session_id: UUID
    consent: Consent
    at: datetime
