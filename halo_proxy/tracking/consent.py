"""Consent of a visitor, read from consent-management-platform (CMP) cookies and the Sec-GPC header.

Each CMP reader returns a Consent or None ("no signal from this CMP"); a malformed cookie is no signal, never an
error. When several CMP cookies are present the first reader in CMP_PRECEDENCE that finds a signal decides:

1. Cookiebot (`CookieConsent`)
2. OneTrust (`OptanonConsent`)
3. CookieYes (`cookieyes-consent`)
4. Complianz (`cmplz_*`)
5. IAB TCF v2 (`euconsent-v2`)

Site-specific CMP cookies come before the TCF string because they carry the site's own analytics/marketing
categories, while the TCF string speaks for ad vendors and is often written by the same CMP alongside its own cookie.

HaloTrack's own consent cookie (`<cookie name>_consent`, set by `POST /_halo/consent` when `t.js` reports a banner
change or the page calls `HaloTrack.consent`) is read beside them: where both speak, the more restrictive wins for
each use, so a withdrawal through either is honoured even when the other was not told. Withdrawing analytics through
it withdraws marketing too (HaloTrack stops tracking the visitor altogether).

`Sec-GPC: 1` then forces marketing off whatever the CMP says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, unquote

from halo_proxy.tracking.models import Consent
from halo_proxy.tracking.tcf import decode_tc_string

# Closed set of `Consent.source` values.
SOURCE_COOKIEBOT = "cookiebot"
SOURCE_ONETRUST = "onetrust"
SOURCE_COOKIEYES = "cookieyes"
SOURCE_COMPLIANZ = "complianz"
SOURCE_TCF = "tcf"
SOURCE_GPC = "gpc"
SOURCE_UNKNOWN = "unknown"
SOURCE_HALOTRACK = "halotrack"
SOURCES: tuple[str, ...] = (
    SOURCE_COOKIEBOT, SOURCE_ONETRUST, SOURCE_COOKIEYES, SOURCE_COMPLIANZ, SOURCE_TCF, SOURCE_GPC, SOURCE_UNKNOWN,
    SOURCE_HALOTRACK,
)

# Consent cookies are small; a much longer value is not one and is not parsed.
_MAX_COOKIE_LENGTH = 4096


@dataclass(frozen=True, slots=True)
class ConsentPolicy:
    """Per-tenant consent settings.

    `unknown`: what a visit with no consent signal counts as (True = granted).
    `onetrust_*_groups`: OneTrust category ids that must all be granted for that use.
    """

    unknown: bool = True
    onetrust_analytics_groups: tuple[str, ...] = ("C0002",)
    onetrust_marketing_groups: tuple[str, ...] = ("C0004",)
    own_cookie: str = "_halo_consent"  # HaloTrack's own consent record (`own_consent_value`)


DEFAULT_POLICY = ConsentPolicy()


def _cookie(cookies: Mapping[str, str], name: str) -> str | None:
    value = cookies.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _MAX_COOKIE_LENGTH:
        return None
    return value


# --- Cookiebot -------------------------------------------------------------------------------------------------

_JS_KEY = re.compile(r"([{,])\s*([A-Za-z_]\w*)\s*:")
_JS_STRING = re.compile(r"'([^'\\]*)'")


def _js_object(literal: str) -> dict | None:
    """Cookiebot's JavaScript object literal (unquoted keys, single-quoted strings) as a dict."""
    text = _JS_KEY.sub(r'\1"\2":', literal)
    text = _JS_STRING.sub(lambda m: json.dumps(m[1]), text)
    obj = json.loads(text)
    return obj if isinstance(obj, dict) else None


def read_cookiebot(cookies: Mapping[str, str], policy: ConsentPolicy) -> Consent | None:
    """`CookieConsent`: `-1` (no consent required in the visitor's region) grants all, not explicit; `0` is an
    explicit decline; otherwise a URL-encoded JS object with `statistics`, `marketing` and `method`."""
    raw = _cookie(cookies, "CookieConsent")
    if raw is None:
        return None
    value = unquote(raw).strip()
    if value == "-1":
        return Consent(analytics=True, marketing=True, explicit=False, source=SOURCE_COOKIEBOT)
    if value == "0":
        return Consent(analytics=False, marketing=False, explicit=True, source=SOURCE_COOKIEBOT)
    if not value.startswith("{"):
        return None
    obj = _js_object(value)
    if obj is None:
        return None
    if obj.get("stamp") == "-1":
        return Consent(analytics=True, marketing=True, explicit=False, source=SOURCE_COOKIEBOT)
    if "statistics" not in obj and "marketing" not in obj:
        return None
    return Consent(
        analytics=obj.get("statistics") is True,
        marketing=obj.get("marketing") is True,
        explicit=obj.get("method") == "explicit",
        source=SOURCE_COOKIEBOT,
    )


# --- OneTrust --------------------------------------------------------------------------------------------------


def read_onetrust(cookies: Mapping[str, str], policy: ConsentPolicy) -> Consent | None:
    """`OptanonConsent`: a query string whose `groups` lists `<id>:1|0`. Explicit when the banner was closed
    (`OptanonAlertBoxClosed`) or `interactionCount` > 0. `isGpcEnabled=1` means the CMP applied GPC."""
    raw = _cookie(cookies, "OptanonConsent")
    if raw is None:
        return None
    fields = dict(parse_qsl(raw, keep_blank_values=True))
    groups: dict[str, str] = {}
    for item in fields.get("groups", "").split(","):
        group, sep, state = item.partition(":")
        if sep and state.strip() in ("0", "1"):
            groups[group.strip()] = state.strip()
    if not groups:
        return None
    interactions = fields.get("interactionCount", "").strip()
    explicit = bool(_cookie(cookies, "OptanonAlertBoxClosed")) or (interactions.isdigit() and int(interactions) > 0)
    gpc = fields.get("isGpcEnabled", "").strip() == "1"

    def granted(ids: tuple[str, ...]) -> bool:
        return bool(ids) and all(groups.get(group_id) == "1" for group_id in ids)

    return Consent(
        analytics=granted(policy.onetrust_analytics_groups),
        marketing=granted(policy.onetrust_marketing_groups) and not gpc,
        explicit=explicit,
        gpc=gpc,
        source=SOURCE_ONETRUST,
    )


# --- CookieYes -------------------------------------------------------------------------------------------------


def read_cookieyes(cookies: Mapping[str, str], policy: ConsentPolicy) -> Consent | None:
    """`cookieyes-consent`: `key:value` pairs separated by commas; `analytics` and `advertisement` are `yes|no`,
    `action:yes` marks a user choice. The summary `consent:` field is ignored."""
    raw = _cookie(cookies, "cookieyes-consent")
    if raw is None:
        return None
    fields: dict[str, str] = {}
    for item in unquote(raw).split(","):
        key, sep, state = item.partition(":")
        if sep:
            fields[key.strip()] = state.strip().lower()
    analytics = fields.get("analytics")
    marketing = fields.get("advertisement")
    if analytics not in ("yes", "no") and marketing not in ("yes", "no"):
        return None
    return Consent(
        analytics=analytics == "yes",
        marketing=marketing == "yes",
        explicit=fields.get("action") == "yes",
        source=SOURCE_COOKIEYES,
    )


# --- Complianz -------------------------------------------------------------------------------------------------

_COMPLIANZ_PREFIXES = ("cmplz_", "cmplz_rt_")
_COMPLIANZ_STATES = ("allow", "deny")


def read_complianz(cookies: Mapping[str, str], policy: ConsentPolicy) -> Consent | None:
    """`cmplz_statistics` / `cmplz_marketing` = `allow|deny` (`cmplz_rt_` prefix on a multisite main site).
    A category without a cookie counts as not allowed; at least one of the two must be readable."""
    for prefix in _COMPLIANZ_PREFIXES:
        statistics = (_cookie(cookies, prefix + "statistics") or "").lower()
        marketing = (_cookie(cookies, prefix + "marketing") or "").lower()
        if statistics in _COMPLIANZ_STATES or marketing in _COMPLIANZ_STATES:
            return Consent(
                analytics=statistics == "allow",
                marketing=marketing == "allow",
                explicit=True,
                source=SOURCE_COMPLIANZ,
            )
    return None


# --- IAB TCF v2 ------------------------------------------------------------------------------------------------


def read_tcf(cookies: Mapping[str, str], policy: ConsentPolicy) -> Consent | None:
    """`euconsent-v2`: analytics = C1 and (C8 or LI8); marketing = C1 and C3 and C4 and (C7 or LI7)."""
    raw = _cookie(cookies, "euconsent-v2")
    if raw is None:
        return None
    tc = decode_tc_string(unquote(raw))
    if tc is None:
        return None
    return Consent(analytics=tc.analytics, marketing=tc.marketing, explicit=True, source=SOURCE_TCF)


CMP_PRECEDENCE: tuple[Callable[[Mapping[str, str], ConsentPolicy], Consent | None], ...] = (
    read_cookiebot,
    read_onetrust,
    read_cookieyes,
    read_complianz,
    read_tcf,
)


def _read_cmps(cookies: Mapping[str, str], policy: ConsentPolicy) -> Consent | None:
    for reader in CMP_PRECEDENCE:
        try:
            found = reader(cookies, policy)
        except (ValueError, TypeError, RecursionError):
            found = None
        if found is not None:
            return found
    return None


# --- HaloTrack's own consent cookie -------------------------------------------------------------------------

_OWN = re.compile(r"v1\.([01])([01])")


def own_consent_value(analytics: bool, marketing: bool) -> str:
    """The value of HaloTrack's consent cookie: `v1.<analytics><marketing>`, each 0 or 1."""
    return f"v1.{int(analytics)}{int(analytics and marketing)}"


def read_own(value: str | None) -> Consent | None:
    """HaloTrack's consent cookie as a Consent (analytics off turns marketing off), None when absent or not ours."""
    if value is None:
        return None
    found = _OWN.fullmatch(value.strip())
    if found is None:
        return None
    analytics = found[1] == "1"
    return Consent(analytics=analytics, marketing=analytics and found[2] == "1", explicit=True,
                   source=SOURCE_HALOTRACK)


def _restrict(cmp: Consent | None, own: Consent | None) -> Consent | None:
    """Both signals: each use only when both allow it; the source names who restricted it."""
    if own is None or cmp is None:
        return cmp if own is None else own
    analytics, marketing = cmp.analytics and own.analytics, cmp.marketing and own.marketing
    if analytics == cmp.analytics and marketing == cmp.marketing:
        return cmp
    return Consent(analytics=analytics, marketing=marketing, explicit=True, source=SOURCE_HALOTRACK)


def has_gpc(headers: Mapping[str, str]) -> bool:
    value = headers.get("sec-gpc")
    return value is not None and value.strip() == "1"


# Every cookie a CMP reader looks at. A visit without any of them (and without Sec-GPC) has no consent signal.
CMP_COOKIE_NAMES: tuple[str, ...] = (
    "CookieConsent",
    "OptanonConsent",
    "OptanonAlertBoxClosed",
    "cookieyes-consent",
    *(prefix + category for prefix in _COMPLIANZ_PREFIXES for category in ("statistics", "marketing")),
    "euconsent-v2",
)
CONSENT_CACHE_SIZE = 1024

_NO_SIGNAL = {
    True: Consent(analytics=True, marketing=True, source=SOURCE_UNKNOWN),
    False: Consent(analytics=False, marketing=False, source=SOURCE_UNKNOWN),
}


def parse_consent(
    cookies: Mapping[str, str],
    headers: Mapping[str, str],
    policy: ConsentPolicy = DEFAULT_POLICY,
) -> Consent:
    """The visitor's consent from CMP cookies (CMP_PRECEDENCE) and Sec-GPC.

    No CMP signal: analytics = marketing = policy.unknown, not explicit, source "unknown" ("gpc" when only Sec-GPC
    was seen). `Sec-GPC: 1` always makes marketing False and gpc True.

    The result depends only on the CMP cookies present, Sec-GPC and the policy: a visit with none of them gets the
    policy's default at once, and decisions for recurring cookie values are kept in a bounded LRU cache.
    """
    values = (*[cookies.get(name) for name in CMP_COOKIE_NAMES], cookies.get(policy.own_cookie))
    gpc = has_gpc(headers)
    if not gpc and values.count(None) == len(values):
        default = _NO_SIGNAL.get(policy.unknown)
        if default is not None:
            return default
    if any(value is not None and len(value) > _MAX_COOKIE_LENGTH for value in values):
        return _decide(values, gpc, policy)  # not worth keeping: such a value is ignored anyway
    return _decide_cached(values, gpc, policy)


def _decide(values: tuple[str | None, ...], gpc: bool, policy: ConsentPolicy) -> Consent:
    cookies = {name: value for name, value in zip(CMP_COOKIE_NAMES, values[:-1], strict=True) if value is not None}
    consent = _restrict(_read_cmps(cookies, policy), read_own(values[-1]))
    if consent is None:
        if gpc:
            return Consent(analytics=policy.unknown, marketing=False, gpc=True, source=SOURCE_GPC)
        return Consent(analytics=policy.unknown, marketing=policy.unknown, source=SOURCE_UNKNOWN)
    if gpc:
        return Consent(
            analytics=consent.analytics, marketing=False, explicit=consent.explicit, gpc=True, source=consent.source
        )
    return consent


_decide_cached = lru_cache(maxsize=CONSENT_CACHE_SIZE)(_decide)
