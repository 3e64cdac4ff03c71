"""The visit rules: which proxied requests are page views ("visits"), and what each one decides.

`skip_reason` runs on every proxied request, so its checks go from cheapest to dearest: method, path, request
headers, and the (cached) user-agent parse last. `decide_visit` is the whole decision for one request, as data:
consent, the cookies to set or expire, the session write or anonymous event to queue, the metric labels. It is
pure: the opened `_halo` cookie, the recent campaign touches, `now` and randomness are passed in, and
`services.visits` carries the decision out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple, Protocol
from uuid import UUID

from halo_proxy.tracking.agent import classify_agent
from halo_proxy.tracking.campaign import has_campaign_data, parse_campaign
from halo_proxy.tracking.consent import ConsentPolicy, parse_consent
from halo_proxy.tracking.device import parse_device
from halo_proxy.tracking.geo import geo_from_headers
from halo_proxy.tracking.models import AnonEvent, Consent, ConsentUpdate, SessionWrite
from halo_proxy.tracking.referrer import parse_referrer
from halo_proxy.tracking.text import valid_text
from halo_proxy.tracking.touch import campaign_fingerprint, touch_for_visit

# Closed set of reasons, usable as a metric label.
SKIP_METHOD = "method"
SKIP_RESERVED = "reserved"
SKIP_ASSET = "asset"
SKIP_PREFETCH = "prefetch"
SKIP_NOT_DOCUMENT = "not_document"
SKIP_BOT = "bot"
SKIP_REASONS: tuple[str, ...] = (SKIP_METHOD, SKIP_RESERVED, SKIP_ASSET, SKIP_PREFETCH, SKIP_NOT_DOCUMENT, SKIP_BOT)

# File extensions that are never a page a person lands on. Pages (.html, .php, .aspx, none) are absent.
ASSET_EXTENSIONS: frozenset[str] = frozenset({
    "js", "mjs", "cjs", "css", "map", "json", "xml", "txt", "webmanifest", "wasm",
    "png", "jpg", "jpeg", "gif", "webp", "avif", "svg", "ico", "bmp", "tif", "tiff", "heic",
    "woff", "woff2", "ttf", "otf", "eot",
    "mp4", "webm", "mov", "m4v", "mp3", "m4a", "ogg", "wav", "flac", "m3u8", "ts",
    "pdf", "zip", "gz", "br", "zst", "tar", "rar", "7z", "csv", "doc", "docx", "xls", "xlsx", "ppt", "pptx",
})


def is_reserved(path: str, reserved_prefix: str) -> bool:
    """True for the prefix itself and everything under it (`/_halo`, `/_halo/t.js`), not for `/_halox`."""
    prefix = reserved_prefix.rstrip("/")
    if not prefix:
        return False
    return path == prefix or path.startswith(prefix + "/")


def is_asset_path(path: str) -> bool:
    last = path.rsplit("/", 1)[-1]
    dot = last.rfind(".")
    if dot == -1:
        return False
    return last[dot + 1 :].lower() in ASSET_EXTENSIONS


def is_prefetch(headers: Mapping[str, str]) -> bool:
    """Speculative loads: `Sec-Purpose: prefetch` (any value starting so, including `prefetch;prerender`),
    legacy `Purpose: prefetch`, Firefox's `X-moz: prefetch` and Safari's `X-Purpose: preview`."""
    purpose = headers.get("sec-purpose")
    if purpose is not None and purpose.strip().lower().startswith("prefetch"):
        return True
    for name in ("purpose", "x-purpose"):
        purpose = headers.get(name)
        if purpose is not None and purpose.strip().lower() in ("prefetch", "preview"):
            return True
    moz = headers.get("x-moz")
    return moz is not None and moz.strip().lower() == "prefetch"


def is_document_request(headers: Mapping[str, str]) -> bool:
    """A top-level navigation: `Sec-Fetch-Dest: document` when the browser sends fetch metadata, else an `Accept`
    that asks for HTML (older browsers, some cache revalidations)."""
    dest = headers.get("sec-fetch-dest")
    if dest is not None:
        return dest.strip().lower() == "document"
    accept = headers.get("accept")
    return accept is not None and "text/html" in accept.lower()


def skip_reason(method: str, path: str, headers: Mapping[str, str], reserved_prefix: str) -> str | None:
    """None when the request is a page view to track, otherwise one of SKIP_REASONS.

    `path` is the URL path without the query; `headers` any case-insensitive mapping.
    """
    if method != "GET":
        return SKIP_METHOD
    if is_reserved(path, reserved_prefix):
        return SKIP_RESERVED
    if is_asset_path(path):
        return SKIP_ASSET
    if is_prefetch(headers):
        return SKIP_PREFETCH
    if not is_document_request(headers):
        return SKIP_NOT_DOCUMENT
    if classify_agent(headers.get("user-agent")).is_bot:
        return SKIP_BOT
    return None


# ---------------------------------------------------------------------------------------------------------
# The visit decision: request facts in, what to set, write and count out. `services.visits` carries it out.


FBC_MAX_AGE = 90 * 24 * 3600
FBP_MAX_AGE = 90 * 24 * 3600
ANON_PATH_MAX = 200
REPEAT_SECONDS = 30 * 60
# Set in the opened state of a `_halo` cookie sealed under a key version since rotated (crypto.COOKIE_STALE):
# the visit seals the same session again under the current key.
STALE_KEY = 0x10
DIRECT = "Direct"

# `fb.<subdomain index>.<creation ms>.<random or fbclid>`, as Meta's pixel writes _fbp and _fbc.
FB_COOKIE = re.compile(r"fb\.[0-9]{1,2}\.[0-9]{1,16}\.[A-Za-z0-9._~+/=-]{1,500}")

class VisitFacts(NamedTuple):
    """A proxied request as the visit rules see it: plain values, no sockets."""

    method: str
    path: str  # decoded, without the query
    host: str  # the Host header as sent (host[:port])
    query: Mapping[str, str]  # the parsed query string (a multidict for repeated keys), or empty
    headers: Mapping[str, str]  # case-insensitive
    cookies: Mapping[str, str]  # the parsed Cookie header


class SiteRules(NamedTuple):
    """What the rules need to know of the tenant a request is for."""

    tenant_id: str
    cookie_name: str
    hosts: tuple[str, ...]
    reserved_prefix: str
    consent: ConsentPolicy


class Fresh(Protocol):
    """Randomness, passed in so that tests can fix it."""

    def session_id(self) -> UUID: ...

    def fbp_number(self) -> int: ...  # 1_000_000_000 <= n < 10_000_000_000, as Meta's pixel draws


class SetCookie(NamedTuple):
    """A cookie other than `_halo` to set (`_fbp`, `_fbc`): readable by the page's own scripts."""

    name: str
    value: str
    max_age: int


Recent = Mapping[tuple[str, UUID], tuple[int, float]]  # (tenant, session) -> (campaign fingerprint, unix time)


class VisitDecision(NamedTuple):
    """What one request means. `skip` set: not a page view, nothing else is. Otherwise `channel` is the visit's
    metric label, `seal_state` the consent bits to seal into a new `_halo` cookie for `session_id` (None: the
    visitor's cookie stays), `expire_session` clears theirs, `cookies` are set after `_halo`, `write` goes to the
    write queue, `remember` is the campaign fingerprint to keep for the repeat rule."""

    skip: str | None = None
    consent: Consent | None = None
    channel: str | None = None
    session_id: UUID | None = None
    seal_state: int | None = None
    expire_session: bool = False
    cookies: tuple[SetCookie, ...] = ()
    write: SessionWrite | ConsentUpdate | AnonEvent | None = None
    created: bool = False  # a new session: halo_sessions_created_total
    touched: bool = False  # a new touch of a known session: halo_touches_total
    remember: int | None = None
    user_agent: str | None = None  # as it may be stored (valid text), for the writer to encrypt
    withdraw: ConsentUpdate | None = None  # consent denied to a tracked session: its identifiers go


_SKIPS = {reason: VisitDecision(skip=reason) for reason in SKIP_REASONS}


def consent_bits(consent: Consent) -> int:
    """The consent state carried, authenticated, in the `_halo` cookie."""
    return (1 if consent.analytics else 0) | (2 if consent.marketing else 0) | (4 if consent.gpc else 0)


def decide_visit(facts: VisitFacts, opened: tuple[UUID, int] | None, site: SiteRules, recent: Recent,
                 now: datetime, fresh: Fresh) -> VisitDecision:
    """The decision for one proxied request. `opened` is the visitor's `_halo` cookie opened (session id, consent
    bits), None when absent or not ours.

    - Not a page view (method, reserved path, asset, prefetch, not a document, bot): skipped, nothing else.
    - Consent denied for analytics and marketing: one anonymous aggregate, no identifier; a `_halo` cookie the
      visitor still has is expired.
    - A returning visitor with no campaign data (no UTM or click id, no outside referrer): the fast path, counted
      Direct; their consent is written only when it changed since the cookie was sealed.
    - Otherwise a touch: a new session, or a touch of the known one, unless it repeats the same campaign landing
      within REPEAT_SECONDS (a reload). With marketing consent `_fbp` is kept or made, and `_fbc` follows the
      latest fbclid.
    """
    reason = skip_reason(facts.method, facts.path, facts.headers, site.reserved_prefix)
    if reason is not None:
        return _SKIPS[reason]
    return judge_visit(facts, parse_consent(facts.cookies, facts.headers, site.consent), opened, site, recent, now,
                       fresh)


def judge_visit(facts: VisitFacts, consent: Consent, opened: tuple[UUID, int] | None, site: SiteRules,
                recent: Recent, now: datetime, fresh: Fresh) -> VisitDecision:
    """A page view under this consent: `decide_visit` past its skip rules, and what `POST /touch` (consent from
    its body) and a consent granted on a page (`POST /consent`) judge the page they report."""
    headers = facts.headers
    cookies = facts.cookies
    query = facts.query
    referer = headers.get("Referer")
    if referer is not None and not referer.isascii():
        referer = valid_text(referer)

    if not (consent.analytics or consent.marketing):
        referrer = parse_referrer(referer, facts.host, site.hosts) if referer else None
        touch = touch_for_visit(campaign=parse_campaign(query), referrer=referrer, landing_path=facts.path, now=now)
        event = AnonEvent(
            tenant_id=site.tenant_id, day=now.date(), utm_source=touch.source, utm_medium=touch.medium,
            utm_campaign=touch.campaign, referrer_domain=touch.referrer_domain,
            path=touch.landing_path[:ANON_PATH_MAX], channel=touch.channel,
        )
        # A visitor still carrying a tracked session withdrew through the banner: the session loses its
        # identifiers now, whether or not the page's script reports the change.
        withdraw = ConsentUpdate(site.tenant_id, opened[0], consent, now) if (
            opened is not None and opened[1] & 3) else None
        return VisitDecision(consent=consent, channel=touch.channel, write=event,
                             expire_session=site.cookie_name in cookies, withdraw=withdraw)

    state = consent_bits(consent)
    campaign_data = has_campaign_data(query)
    referrer = None
    if referer is not None and not _same_origin(referer, facts.host):
        referrer = parse_referrer(referer, facts.host, site.hosts)
        campaign_data = campaign_data or referrer is not None
    if opened is not None and not campaign_data:
        # The fast path: a returning visitor with nothing new. No parse beyond this.
        session_id, old_state = opened
        fbp = (SetCookie("_fbp", new_fbp(now, fresh), FBP_MAX_AGE),) if (
            consent.marketing and "_fbp" not in cookies) else ()
        if old_state == state:
            return VisitDecision(consent=consent, channel=DIRECT, session_id=session_id, cookies=fbp)
        if old_state == state | STALE_KEY:  # sealed under a key since rotated: the same cookie, new key
            return VisitDecision(consent=consent, channel=DIRECT, session_id=session_id, seal_state=state,
                                 cookies=fbp)
        return VisitDecision(consent=consent, channel=DIRECT, session_id=session_id, seal_state=state, cookies=fbp,
                             write=ConsentUpdate(site.tenant_id, session_id, consent, now))

    campaign = parse_campaign(query)
    touch = touch_for_visit(campaign=campaign, referrer=referrer, landing_path=facts.path, now=now)
    if opened is None:
        session_id = fresh.session_id()
    else:
        session_id = opened[0]
        seen = recent.get((site.tenant_id, session_id))
        if (seen is not None and seen[0] == campaign_fingerprint(touch)
                and now.timestamp() - seen[1] < REPEAT_SECONDS):
            return VisitDecision(consent=consent, channel=touch.channel, session_id=session_id)
    is_new = opened is None
    # Only a campaign touch can be repeated (a visit without campaign data takes the fast path).
    remember = campaign_fingerprint(touch) if campaign_data else None

    set_cookies: list[SetCookie] = []
    fbp = fbc = None
    if consent.marketing:
        fbp = cookies.get("_fbp")
        if fbp and not FB_COOKIE.fullmatch(fbp):
            fbp = None  # not a value Meta set or we set: replaced
        if not fbp:
            fbp = new_fbp(now, fresh)
            set_cookies.append(SetCookie("_fbp", fbp, FBP_MAX_AGE))
        fbc = cookies.get("_fbc")
        if fbc and not FB_COOKIE.fullmatch(fbc):
            fbc = None
        fbclid = campaign.click_id_map.get("fbclid")
        if fbclid and (not fbc or fbc.rsplit(".", 1)[-1] != fbclid):
            fbc = f"fb.1.{int(now.timestamp() * 1000)}.{fbclid}"
            set_cookies.append(SetCookie("_fbc", fbc, FBC_MAX_AGE))
    user_agent = headers.get("User-Agent")
    if user_agent is not None and not user_agent.isascii():
        user_agent = valid_text(user_agent)
    write = SessionWrite(
        tenant_id=site.tenant_id, session_id=session_id, is_new=is_new, touch=touch,
        device=parse_device(user_agent), geo=geo_from_headers(headers), consent=consent,
        fbp=fbp, fbc=fbc, at=now,
    )
    return VisitDecision(
        consent=consent, channel=touch.channel, session_id=session_id,
        seal_state=state if is_new or opened[1] != state else None,  # type: ignore[index]
        cookies=tuple(set_cookies), write=write, created=is_new, touched=not is_new, remember=remember,
        user_agent=user_agent,
    )


def new_fbp(now: datetime, fresh: Fresh) -> str:
    return f"fb.1.{int(now.timestamp() * 1000)}.{fresh.fbp_number()}"


def set_cookie_header(name: str, value: str, max_age: int, https: bool, *, domain: str | None = None,
                      http_only: bool = True) -> str:
    """A Set-Cookie value: Path=/, SameSite=Lax, Secure when the visitor came over HTTPS."""
    parts = [f"{name}={value}", f"Max-Age={max_age}", "Path=/", "SameSite=Lax"]
    if domain:
        parts.append(f"Domain={domain}")
    if http_only:
        parts.append("HttpOnly")
    if https:
        parts.append("Secure")
    return "; ".join(parts)


def _same_origin(referer: str, host: str) -> bool:
    """Cheap pre-check for internal navigation: the Referer's authority is the request's Host."""
    start = referer.find("://")
    if start == -1:
        return False
    rest = referer[start + 3:]
    return rest.startswith(host) and rest[len(host):len(host) + 1] in ("", "/", "?", "#")
