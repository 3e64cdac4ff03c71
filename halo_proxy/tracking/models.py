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
