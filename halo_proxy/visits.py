"""Page-view tracking on the proxy's hot path; the background writer behind it is `storage.write_queue`.

`VisitTracker.observe` runs synchronously before a page is forwarded. It decides, from the request alone,
whether this is a visit, what the visitor allowed, who they are (the sealed `_halo` cookie) and whether the visit
brings campaign data. It returns the cookies to set and hands any write to the `VisitWriter`, which queues it
without waiting and writes batches in the background: a page is never held back by the database.

The returning visitor who brings no campaign data and whose consent is unchanged costs no database call at all:
their consent bits travel, authenticated, in the cookie itself.

What `observe` needs on every page view is cached: the parsed Cookie header (keyed by the raw header, in a bounded
LRU), the opened `_halo` value and the consent decision (see `crypto` and `tracking.consent`). The encryption of
the IP address and user agent of a new visit is left to the writer, which does it just before the batch is
written: the page waits only for the decisions.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from uuid import UUID

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from .config import Tenant
from .crypto import KeyRing, random_below
from .metrics import Metrics
from .storage.sessions import AnonEvent, SessionWrite
from .storage.write_queue import ConsentUpdate, PendingVisit, VisitWriter
from .tracking.campaign import has_campaign_data, parse_campaign
from .tracking.consent import ConsentPolicy, parse_consent
from .tracking.device import parse_device
from .tracking.geo import geo_from_headers
from .tracking.models import Consent, Touch
from .tracking.referrer import parse_referrer
from .tracking.text import valid_text
from .tracking.touch import campaign_fingerprint, touch_for_visit
from .tracking.visit import skip_reason

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

FBC_MAX_AGE = 90 * 24 * 3600
FBP_MAX_AGE = 90 * 24 * 3600
ANON_PATH_MAX = 200
RECENT_TOUCHES = 10_000
REPEAT_SECONDS = 30 * 60
# Parsed Cookie headers kept per process, and the longest header worth keeping (longer ones are parsed each time).
COOKIE_CACHE_SIZE = 4096
COOKIE_CACHE_MAX_CHARS = 4096

_NO_COOKIES: Mapping[str, str] = MappingProxyType({})

_EMPTY_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


def utc_now() -> datetime:
    return datetime.now(UTC)


def consent_bits(consent: Consent) -> int:
    return (1 if consent.analytics else 0) | (2 if consent.marketing else 0) | (4 if consent.gpc else 0)


# ---------------------------------------------------------------------------------------------------------


class VisitTracker:
    """Per-request tracking decisions. Synchronous and cheap: no I/O happens here."""

    def __init__(self, keys: KeyRing, writer: VisitWriter, metrics: Metrics, reserved_prefix: str,
                 clock: Clock = utc_now):
        self.keys = keys
        self.writer = writer
        self.metrics = metrics
        self.reserved_prefix = reserved_prefix
        self.clock = clock
        self._policies: dict[str, tuple[object, ConsentPolicy]] = {}
        self._recent: OrderedDict[tuple[str, UUID], tuple[str, float]] = OrderedDict()
        self._cookies: OrderedDict[str, Mapping[str, str]] = OrderedDict()

    def cookies(self, request: web.Request) -> Mapping[str, str]:
        """`request.cookies`, parsed once per distinct Cookie header: a returning visitor sends the same header
        page after page. Bounded LRU; headers longer than COOKIE_CACHE_MAX_CHARS are parsed every time."""
        header = request.headers.get("Cookie")
        if not header:
            return _NO_COOKIES
        cache = self._cookies
        parsed = cache.get(header)
        if parsed is not None:
            cache.move_to_end(header)
            return parsed
        parsed = request.cookies
        if len(header) <= COOKIE_CACHE_MAX_CHARS:
            cache[header] = parsed
            if len(cache) > COOKIE_CACHE_SIZE:
                cache.popitem(last=False)
        return parsed

    def policy(self, tenant: Tenant) -> ConsentPolicy:
        cached = self._policies.get(tenant.id)
        if cached is not None and cached[0] is tenant.consent:
            return cached[1]
        policy = ConsentPolicy(
            unknown=tenant.consent.unknown == "granted",
            onetrust_analytics_groups=tenant.consent.onetrust_analytics_groups,
            onetrust_marketing_groups=tenant.consent.onetrust_marketing_groups,
        )
        self._policies[tenant.id] = (tenant.consent, policy)
        return policy

    def observe(self, request: web.Request, tenant: Tenant, client_ip: str | None, https: bool) -> list[str]:
        """The Set-Cookie values for this response (empty when nothing is to be set)."""
        headers = request.headers
        reason = skip_reason(request.method, request.path, headers, self.reserved_prefix)
        if reason is not None:
            self.metrics.skip(tenant.id, reason)
            return []
        cookies = self.cookies(request)
        consent = parse_consent(cookies, headers, self.policy(tenant))
        cookie_name = tenant.cookie.name
        raw_cookie = cookies.get(cookie_name)
        opened = self.keys.open_session_state(tenant.id, raw_cookie) if raw_cookie is not None else None
        query = request.query if request.query_string else _EMPTY_QUERY
        referer = headers.get("Referer")
        if referer is not None and not referer.isascii():
            referer = valid_text(referer)

        if not (consent.analytics or consent.marketing):
            self._anonymous(request, tenant, query, referer, consent)
            return [self._expire(tenant, https)] if raw_cookie is not None else []

        state = consent_bits(consent)
        campaign_data = has_campaign_data(query)
        referrer = None
        if referer is not None and not _same_origin(referer, request.host):
            referrer = parse_referrer(referer, request.host, tenant.hosts)
            campaign_data = campaign_data or referrer is not None
        now = None
        set_cookies: list[str] = []
        if opened is not None and not campaign_data:
            # The fast path: a returning visitor with nothing new. No parse beyond this, no database.
            session_id, old_state = opened
            if old_state != state:
                now = self.clock()
                self.writer.submit(ConsentUpdate(tenant.id, session_id, consent, now))
                set_cookies.append(self._cookie(tenant, self.keys.seal_session(tenant.id, session_id, state), https))
            self.metrics.visit(tenant.id, consent.state, "Direct")
            if consent.marketing and "_fbp" not in cookies:
                set_cookies.append(self._fbp_cookie(https, now or self.clock()))
            return set_cookies

        now = self.clock()
        campaign = parse_campaign(query)
        touch = touch_for_visit(campaign=campaign, referrer=referrer, landing_path=request.path, now=now)
        is_new = opened is None
        if is_new:
            session_id = self.keys.new_session_id()
            self.metrics.session_created(tenant.id)
        else:
            session_id = opened[0]
            if self._repeat(tenant.id, session_id, touch, now):
                self.metrics.visit(tenant.id, consent.state, touch.channel)
                return set_cookies
        if campaign_data:
            # Only a campaign touch can be repeated (a visit without campaign data takes the fast path).
            self._remember(tenant.id, session_id, touch, now)
        if is_new or opened[1] != state:
            set_cookies.append(self._cookie(tenant, self.keys.seal_session(tenant.id, session_id, state), https))

        fbp = fbc = None
        user_agent = headers.get("User-Agent")
        if user_agent is not None and not user_agent.isascii():
            user_agent = valid_text(user_agent)
        if consent.marketing:
            fbp = cookies.get("_fbp")
            if fbp and not _FB_COOKIE.fullmatch(fbp):
                fbp = None  # not a value Meta set or we set: replaced below
            if not fbp:
                fbp = _new_fbp(now)
                set_cookies.append(self._fbp_cookie(https, now, fbp))
            fbc = cookies.get("_fbc")
            if fbc and not _FB_COOKIE.fullmatch(fbc):
                fbc = None
            fbclid = campaign.click_id_map.get("fbclid")
            if fbclid and (not fbc or fbc.rsplit(".", 1)[-1] != fbclid):
                fbc = f"fb.1.{int(now.timestamp() * 1000)}.{fbclid}"
                set_cookies.append(_cookie_header("_fbc", fbc, FBC_MAX_AGE, https, http_only=False))
        write = SessionWrite(
            tenant_id=tenant.id, session_id=session_id, is_new=is_new, touch=touch,
            device=parse_device(user_agent), geo=geo_from_headers(headers), consent=consent,
            ip_hash=self.keys.hash_ip(tenant.id, client_ip) if client_ip else None,
            fbp=fbp, fbc=fbc, at=now,
        )
        if consent.marketing and (client_ip or user_agent):
            # IP and user agent are encrypted by the writer, just before the batch is stored.
            self.writer.submit(PendingVisit(write, self.keys, client_ip, user_agent))
        else:
            self.writer.submit(write)
        if not is_new:
            self.metrics.touch(tenant.id)
        self.metrics.visit(tenant.id, consent.state, touch.channel)
        return set_cookies

    # -- helpers -------------------------------------------------------------------------------------------

    def _anonymous(self, request: web.Request, tenant: Tenant, query, referer: str | None,  # type: ignore[no-untyped-def]
                   consent: Consent) -> None:
        now = self.clock()
        referrer = parse_referrer(referer, request.host, tenant.hosts) if referer else None
        touch = touch_for_visit(campaign=parse_campaign(query), referrer=referrer, landing_path=request.path, now=now)
        self.writer.count_anon(AnonEvent(
            tenant_id=tenant.id, day=now.date(), utm_source=touch.source, utm_medium=touch.medium,
            utm_campaign=touch.campaign, referrer_domain=touch.referrer_domain,
            path=touch.landing_path[:ANON_PATH_MAX], channel=touch.channel,
        ))
        self.metrics.visit(tenant.id, consent.state, touch.channel)

    def _repeat(self, tenant_id: str, session_id: UUID, touch: Touch, now: datetime) -> bool:
        """A reload of the same campaign landing within 30 minutes in this process is not a new touch."""
        seen = self._recent.get((tenant_id, session_id))
        return (seen is not None and seen[0] == campaign_fingerprint(touch)
                and now.timestamp() - seen[1] < REPEAT_SECONDS)

    def _remember(self, tenant_id: str, session_id: UUID, touch: Touch, now: datetime) -> None:
        key = (tenant_id, session_id)
        self._recent[key] = (campaign_fingerprint(touch), now.timestamp())
        self._recent.move_to_end(key)
        if len(self._recent) > RECENT_TOUCHES:
            self._recent.popitem(last=False)

    def _cookie(self, tenant: Tenant, value: str, https: bool) -> str:
        c = tenant.cookie
        return _cookie_header(c.name, value, c.max_age_days * 86400, https, domain=c.domain)

    def _expire(self, tenant: Tenant, https: bool) -> str:
        return _cookie_header(tenant.cookie.name, "", 0, https, domain=tenant.cookie.domain)

    def _fbp_cookie(self, https: bool, now: datetime, value: str | None = None) -> str:
        return _cookie_header("_fbp", value or _new_fbp(now), FBP_MAX_AGE, https, http_only=False)


# `fb.<subdomain index>.<creation ms>.<random or fbclid>`, as Meta's pixel writes _fbp and _fbc.
_FB_COOKIE = re.compile(r"fb\.[0-9]{1,2}\.[0-9]{1,16}\.[A-Za-z0-9._~+/=-]{1,500}")


def _new_fbp(now: datetime) -> str:
    return f"fb.1.{int(now.timestamp() * 1000)}.{random_below(9_000_000_000) + 1_000_000_000}"


def _cookie_header(name: str, value: str, max_age: int, https: bool, *, domain: str | None = None,
                   http_only: bool = True) -> str:
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
