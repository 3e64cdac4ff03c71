"""Campaign data carried by a landing URL: UTM parameters and ad-platform click ids."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from halo_proxy.tracking.models import CLICK_ID_PARAMS, UTM_PARAMS
from halo_proxy.tracking.text import clean, redact

UTM_MAX_LENGTH = 200
# Real click ids are well under this; a longer value is refused rather than cut, because a truncated id matches
# nothing on the ad platform.
CLICK_ID_MAX_LENGTH = 512

_CAMPAIGN_PARAMS: frozenset[str] = frozenset(UTM_PARAMS) | frozenset(CLICK_ID_PARAMS)


@dataclass(frozen=True, slots=True)
class Campaign:
    """UTM values (trimmed, None when absent or empty) and click ids in CLICK_ID_PARAMS order."""

    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None
    utm_id: str | None = None
    click_ids: tuple[tuple[str, str], ...] = ()

    @property
    def has_utm(self) -> bool:
        return any((self.source, self.medium, self.campaign, self.term, self.content, self.utm_id))

    @property
    def click_id_map(self) -> dict[str, str]:
        return dict(self.click_ids)

    def __bool__(self) -> bool:
        return self.has_utm or bool(self.click_ids)


NO_CAMPAIGN = Campaign()


def has_campaign_data(query: Mapping[str, str]) -> bool:
    """Cheap hot-path test: does the query carry a non-blank UTM parameter or click id?"""
    if not query:
        return False
    for name in query:
        if name in _CAMPAIGN_PARAMS and query[name].strip():
            return True
    return False


# What ad platforms put in click ids (base64url, hex, dotted TikTok ids), and nothing that could end a cookie
# value or add an attribute when a click id goes into `_fbc` (`abc; Domain=example.com`).
_CLICK_ID_RE = re.compile(r"[A-Za-z0-9._~+/=-]+")


def _click_id(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > CLICK_ID_MAX_LENGTH or not _CLICK_ID_RE.fullmatch(value):
        return None
    return value


def parse_campaign(query: Mapping[str, str]) -> Campaign:
    """UTMs and click ids from a query mapping (first value per name). Names are matched exactly (lowercase utm_*,
    `ScCid` as the platform spells it). UTM values are trimmed and cut to UTM_MAX_LENGTH; click ids are verbatim."""
    if not query:
        return NO_CAMPAIGN
    found: dict[str, str] = {}
    for name, value in query.items():  # a landing URL has a few parameters; there are 18 campaign names
        if name in _CAMPAIGN_PARAMS and name not in found:
            found[name] = value
    if not found:
        return NO_CAMPAIGN
    # An email in a UTM value (a newsletter tool that puts the address in utm_content) is not kept.
    utm = [_utm(found.get(name)) for name in UTM_PARAMS]
    click_ids = tuple(
        (name, value) for name in CLICK_ID_PARAMS
        if name in found and (value := _click_id(found[name])) is not None
    )
    if click_ids or any(utm):
        return Campaign(*utm, click_ids=click_ids)
    return NO_CAMPAIGN


def _utm(value: str | None) -> str | None:
    text = clean(value, UTM_MAX_LENGTH)
    return redact(text, phones=False) if text is not None and "@" in text else text
