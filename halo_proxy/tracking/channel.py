"""GA4 default channel group, and the source/medium of a visit whose URL carries no UTM source or medium."""

from __future__ import annotations

import re
from functools import lru_cache

from halo_proxy.tracking.campaign import Campaign
from halo_proxy.tracking.referrer import Referrer
from halo_proxy.tracking.sources import SEARCH, SHOPPING, SOCIAL, VIDEO, source_category

DIRECT = "Direct"
UNASSIGNED = "Unassigned"

# Every channel name the rules can return, for metric label sets.
CHANNELS: tuple[str, ...] = (
    DIRECT,
    "Cross-network",
    "Paid Shopping",
    "Paid Search",
    "Paid Social",
    "Paid Video",
    "Display",
    "Paid Other",
    "Organic Shopping",
    "Organic Social",
    "Organic Video",
    "Organic Search",
    "Referral",
    "Email",
    "Affiliates",
    "Audio",
    "SMS",
    "Mobile Push Notifications",
    UNASSIGNED,
)

NOT_SET = "(not set)"
DIRECT_SOURCE = "(direct)"
DIRECT_MEDIUM = "(none)"

_PAID = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$", re.IGNORECASE)
_SHOP_CAMPAIGN = re.compile(r"^(.*(([^a-df-z]|^)shop|shopping).*)$", re.IGNORECASE)
_VIDEO_MEDIUM = re.compile(r"^(.*video.*)$", re.IGNORECASE)
_DISPLAY_MEDIUMS = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
_SOCIAL_MEDIUMS = frozenset({"social", "social-network", "social-media", "sm", "social network", "social media"})
_REFERRAL_MEDIUMS = frozenset({"referral", "app", "link"})
_EMAIL_VALUES = frozenset({"email", "e-mail", "e_mail", "e mail"})


CHANNEL_CACHE_SIZE = 4096


@lru_cache(maxsize=CHANNEL_CACHE_SIZE)
def default_channel(source: str | None, medium: str | None, campaign: str | None = None) -> str:
    """The GA4 default channel group, rules evaluated top-down, first match wins, case-insensitive.

    `source`/`medium` are what the visit was attributed to (UTMs, or `derive_source_medium`); absent values are
    treated as empty strings, which match no rule except the ones on other fields. Results are kept in a bounded
    LRU cache: a site's visits come from a small set of source/medium/campaign combinations.
    """
    src = (source or "").strip().lower()
    med = (medium or "").strip().lower()
    camp = (campaign or "").strip().lower()
    category = source_category(src)
    paid = _PAID.match(med) is not None
    shop_campaign = _SHOP_CAMPAIGN.match(camp) is not None

    if src == DIRECT_SOURCE and med in (NOT_SET, DIRECT_MEDIUM):
        return DIRECT
    if "cross-network" in camp:
        return "Cross-network"
    if (category == SHOPPING or shop_campaign) and paid:
        return "Paid Shopping"
    if category == SEARCH and paid:
        return "Paid Search"
    if category == SOCIAL and paid:
        return "Paid Social"
    if category == VIDEO and paid:
        return "Paid Video"
    if med in _DISPLAY_MEDIUMS:
        return "Display"
    if paid:
        return "Paid Other"
    if category == SHOPPING or shop_campaign:
        return "Organic Shopping"
    if category == SOCIAL or med in _SOCIAL_MEDIUMS:
        return "Organic Social"
    if category == VIDEO or _VIDEO_MEDIUM.match(med):
        return "Organic Video"
    if category == SEARCH or med == "organic":
        return "Organic Search"
    if med in _REFERRAL_MEDIUMS:
        return "Referral"
    if src in _EMAIL_VALUES or med in _EMAIL_VALUES:
        return "Email"
    if med == "affiliate":
        return "Affiliates"
    if med == "audio":
        return "Audio"
    if src == "sms" or med == "sms":
        return "SMS"
    if med.endswith("push") or "mobile" in med or "notification" in med or src == "firebase":
        return "Mobile Push Notifications"
    return UNASSIGNED


# Paid click ids without UTMs, in order of precedence when several are present. fbclid is absent on purpose:
# Facebook and Instagram add it to organic outbound links too. dclid (Campaign Manager 360 / DV360) is reported
# as `dfa / cpm` the way Google Analytics does: `google / cpm` would fall into Paid Search at rule 4, not Display.
PAID_CLICK_IDS: tuple[tuple[str, str, str], ...] = (
    ("gclid", "google", "cpc"),
    ("gbraid", "google", "cpc"),
    ("wbraid", "google", "cpc"),
    ("msclkid", "bing", "cpc"),
    ("dclid", "dfa", "cpm"),
    ("ttclid", "tiktok", "cpc"),
    ("li_fat_id", "linkedin", "cpc"),
    ("twclid", "x", "cpc"),
    ("ScCid", "snapchat", "cpc"),
    ("epik", "pinterest", "cpc"),
    ("rdt_cid", "reddit", "cpc"),
)


def derive_source_medium(campaign: Campaign, referrer: Referrer | None) -> tuple[str, str]:
    """Source and medium of a visit.

    Order: UTM source/medium when either is present (a missing one is `(not set)`); else a paid click id
    (PAID_CLICK_IDS order); else the external referrer (a known search engine -> `<engine>/organic`, anything else
    -> `<domain>/referral`); else fbclid alone -> `facebook/social`; else `(direct)/(none)`.
    """
    if campaign.source or campaign.medium:
        return campaign.source or NOT_SET, campaign.medium or NOT_SET
    if campaign.click_ids:
        present = campaign.click_id_map
        for name, source, medium in PAID_CLICK_IDS:
            if name in present:
                return source, medium
    if referrer is not None:
        if referrer.category == SEARCH and referrer.name:
            return referrer.name, "organic"
        return referrer.domain, "referral"
    if campaign.click_ids and "fbclid" in campaign.click_id_map:
        return "facebook", "social"
    return DIRECT_SOURCE, DIRECT_MEDIUM
