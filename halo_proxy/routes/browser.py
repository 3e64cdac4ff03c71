"""Browser routes under the reserved prefix: `GET /t.js`, `GET /session`, `POST /consent`, `POST /touch` and
`POST /event`.

A browser route checks the Origin (`/consent`: a tenant host; `/touch`: a listed external origin or a tenant
host; `/event`: either), is rate limited per client IP (the same buckets as identify), reads a small bounded JSON
body (`text/plain` too: `navigator.sendBeacon` and a no-preflight `fetch` send that), names every bad field (422),
and stores nothing on failure. Answers to a listed external origin carry CORS headers that echo it (never `*`);
a preflight from any other origin is refused with 403.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..config import Settings, Tenant
from ..crypto import KeyRing
from ..edge.admission import CLIENT, TENANT
from ..edge.boundary import parse_host, parse_url
from ..services.browser import BrowserVisits
from ..services.events import Events
from ..services.visits import consent_policy
from ..storage import sessions as session_store
from ..tracking.consent import parse_consent
from ..tracking.consent_change import effective_consent
from ..tracking.conversion import InputError
from ..tracking.events import parse_event
from ..tracking.models import Consent
from ..tracking.visit import VisitFacts
from .common import ApiError, handler_for, json_ok, media_type, parse_json_object, read_body
from .conversions import IDENTIFY_TYPES, RateLimits, allowed_origin

EVENT_BODY_MAX = 8 * 1024  # name, props (2 KB as JSON) and their escapes
BROWSER_BODY_MAX = 8 * 1024  # /touch and /consent: two URLs and a few flags
URL_MAX = 4096
SCRIPT_MAX_AGE_S = 3600  # t.js is revalidated hourly (its ETag makes that a 304)
PREFLIGHT_MAX_AGE_S = 600

ANALYTICS = 1  # the consent bit sealed in the _halo cookie (tracking.visit.consent_bits)


def compact(source: str) -> str:
    """`t.js` as served: without its opening comment, indentation, blank lines and whole-line `//` comments. Not a
    minifier: lines are kept whole, so the script must not spread a string or template literal over lines."""
    text = re.sub(r"\A/\*.*?\*/\n", "", source, flags=re.S)
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("//")) + "\n"


class Script:
    """`t.js`, read once: its compacted bytes, a gzip copy and the ETag of its content."""

    def __init__(self, text: bytes | None = None):
        source = text if text is not None else resources.files("halo_proxy").joinpath("static/t.js").read_bytes()
        self.body = compact(source.decode("utf-8")).encode("utf-8")
        self.gzipped = gzip.compress(self.body, 9, mtime=0)
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    def response(self, request: web.Request) -> web.Response:
        headers = {"ETag": self.etag, "Cache-Control": f"public, max-age={SCRIPT_MAX_AGE_S}",
                   "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
        tags = {t.strip().removeprefix("W/") for t in request.headers.get("If-None-Match", "").split(",")}
        if self.etag in tags or "*" in tags:  # weak comparison, as for a GET (RFC 9110 13.1.2)
            return web.Response(status=304, headers=headers)
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=self.gzipped, headers=headers, content_type="application/javascript",
                                charset="utf-8")
        return web.Response(body=self.body, headers=headers, content_type="application/javascript", charset="utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"The body names {key!r} twice.")
        seen[key] = value
    return seen


def accepts_gzip(header: str) -> bool:
    """`Accept-Encoding` names gzip (or `*`) with a quality above zero."""
    for item in header.lower().split(","):
        name, _, params = item.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            quality = params.strip()
            if quality.startswith("q="):
                try:
                    return float(quality[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def listed_origin(request: web.Request, tenant: Tenant) -> str | None:
    """The tenant's `external_origins` entry the request's Origin names (as listed, so that is what CORS echoes),
    or None."""
    origin = request.headers.get("Origin")
    if origin:
        wanted = origin.rstrip("/").lower()
        if wanted in tenant.external_origins:
            return wanted
    return None


def cors_headers(origin: str | None) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}


def _bool(data: dict[str, Any], name: str, where: str = "") -> bool:
    value = data.get(name)
    if value is None:
        raise ApiError(422, "missing_field", f"Send {where}{name} as true or false.", where + name)
    if type(value) is not bool:
        raise ApiError(422, "invalid_field", f"{where}{name} must be true or false.", where + name)
    return value


def _only(data: dict[str, Any], fields: frozenset[str], where: str = "") -> None:
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ApiError(422, "unknown_field", f"Unknown field {where}{unknown[0]}; send {', '.join(sorted(fields))}.",
                       where + unknown[0])


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise ApiError(422, "invalid_field", f"{name} must be a string.", name)
    if len(value) > URL_MAX:
        raise ApiError(422, "invalid_field", f"{name} may be at most {URL_MAX} characters.", name)
    return value


def page_facts(url: str, referrer: str | None, request: web.Request, cookies: dict[str, str] | Any) -> VisitFacts:
    """The page a browser reports, as the visit rules see a page view: its path and query from `url`, the page's
    own referrer (`document.referrer`) as the Referer, the request's other headers (user agent, geo)."""
    parsed = URL(url)
    headers = CIMultiDict(request.headers)
    headers.popall("Referer", None)
    if referrer:
        headers["Referer"] = referrer
    return VisitFacts("GET", parsed.path, parsed.raw_authority, parsed.query, headers, cookies)


def from_this_page(request: web.Request, settings: Settings, tenant: Tenant) -> bool:
    """`/consent` comes from a page of this very host and port: its Origin (else Referer) names the Host the
    request was sent to. Stricter than a form post's check (which accepts any of the
    tenant's hosts): another service on another port of a tenant host must not set a visitor's consent."""
    origin = request.headers.get("Origin")
    parsed = parse_url(origin if origin and origin != "null" else request.headers.get("Referer"))
    host = parse_host(request.host)
    if parsed is None or host is None or settings.tenant_for_name(parsed.host.name) is not tenant:
        return False
    # Browsers leave a default port out of both, so the authorities compare as sent; the scheme is not compared:
    # behind a TLS-terminating balancer the page is https while the request HaloTrack sees may be http.
    return parsed.host == host


def _session_ref(value: Any) -> str | None:
    if value is not None and type(value) is not str:
        raise ApiError(422, "invalid_field", "session_id must be a string.", "session_id")
    return value


def _page_url(value: str | None, field: str) -> str:
    if value is None or parse_url(value) is None:
        raise ApiError(422, "invalid_field", f"{field} must be an absolute http(s) URL.", field)
    return value


class BrowserRoutes:
    def __init__(self, events: Events, visits: BrowserVisits, keys: KeyRing, limits: RateLimits,
                 clock: Callable[[], datetime]):
        self.events = events
        self.visits = visits
        self.keys = keys
        self.limits = limits
        self.clock = clock

    async def _json(self, request: web.Request, tenant: Tenant, settings: Settings, limit: int) -> dict[str, Any]:
        if media_type(request) not in IDENTIFY_TYPES:
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
        body = await read_body(request, min(tenant.max_body_bytes, limit), settings.server.client.body_timeout_s)
        data = parse_json_object(body)
        try:  # a key sent twice is refused: `{"analytics": false, "analytics": true}` means nothing sure
            json.loads(body, object_pairs_hook=_no_duplicates)
        except ValueError as err:
            raise ApiError(400, "invalid_json", str(err)) from err
        except RecursionError:
            pass  # nested past Python's limit: no field takes such a value, the field checks refuse it by name
        return data

    # -- GET /session --------------------------------------------------------------------------------------

    async def session(self, request: web.Request, tenant: Tenant, settings: Settings,
                      client_ip: str | None) -> web.StreamResponse:
        cookies = request.cookies
        consent = parse_consent(cookies, request.headers, consent_policy(tenant))
        return json_ok(200, self.visits.session_state(tenant, cookies, consent),
                       headers={"Cache-Control": "no-store", "Vary": "Cookie"})

    # -- POST /consent -------------------------------------------------------------------------------------

    async def consent(self, request: web.Request, tenant: Tenant, settings: Settings,
                      client_ip: str | None) -> web.StreamResponse:
        if not from_this_page(request, settings, tenant):
            raise ApiError(403, "forbidden_origin", "Consent may be changed only from the site's own pages.")
        self.limits.check(tenant, client_ip)
        data = await self._json(request, tenant, settings, BROWSER_BODY_MAX)
        _only(data, frozenset({"analytics", "marketing", "url", "referrer"}))
        analytics, marketing = _bool(data, "analytics"), _bool(data, "marketing")
        url = _text(data, "url")
        if url is not None:
            _page_url(url, "url")
            host = parse_url(url).host.name  # type: ignore[union-attr]
            if settings.tenant_for_name(host) is not tenant:
                raise ApiError(422, "invalid_field", "url must be a page of this site.", "url")
        else:
            referer = request.headers.get("Referer")
            url = referer if referer and parse_url(referer) is not None else f"http://{request.host}/"
        cookies = request.cookies
        previous = parse_consent(cookies, request.headers, consent_policy(tenant))
        client = request[CLIENT]
        answer = await self.visits.change_consent(
            tenant, page_facts(url, _text(data, "referrer"), request, cookies), previous, analytics, marketing,
            request.headers.get("Sec-GPC", "").strip() == "1", client_ip, client.https)
        consent = answer.change.consent
        response = json_ok(200, {"analytics": consent.analytics, "marketing": consent.marketing,
                                 "session_id": str(answer.session_id) if answer.session_id else None},
                           headers={"Cache-Control": "no-store"})
        for value in answer.set_cookies:
            response.headers.add("Set-Cookie", value)
        return response

    # -- POST /touch ---------------------------------------------------------------------------------------

    async def touch(self, request: web.Request, tenant: Tenant, settings: Settings,
                    client_ip: str | None) -> web.StreamResponse:
        external = listed_origin(request, tenant)
        if external is None:  # the site's own pages have their cookie and /session: /touch is for the others
            raise ApiError(403, "forbidden_origin", "This origin is not one of the site's external_origins.")
        self.limits.check(tenant, client_ip)
        data = await self._json(request, tenant, settings, BROWSER_BODY_MAX)
        _only(data, frozenset({"url", "referrer", "session_id", "consent"}))
        url = _page_url(_text(data, "url"), "url")
        if URL(url).origin() != URL(external):
            raise ApiError(422, "invalid_field", "url must be a page of the calling origin.", "url")
        referrer = _text(data, "referrer")
        ref = _session_ref(data.get("session_id"))
        gpc = request.headers.get("Sec-GPC", "").strip() == "1"
        given = data.get("consent")
        if given is not None:
            if not isinstance(given, dict):
                raise ApiError(422, "invalid_field", "consent must be an object {analytics, marketing}.", "consent")
            _only(given, frozenset({"analytics", "marketing"}), "consent.")
            consent = effective_consent(_bool(given, "analytics", "consent."), _bool(given, "marketing", "consent."),
                                        gpc)
        else:
            unknown = tenant.consent.unknown == "granted"
            consent = Consent(analytics=unknown, marketing=unknown and not gpc, gpc=gpc)
        session_ref = self.keys.session_from_ref(tenant.id, ref)
        session_id = await self.visits.touch(tenant, page_facts(url, referrer, request, {}), session_ref, consent,
                                             client_ip)
        return json_ok(200, {"session_id": str(session_id) if session_id else None},
                       headers={"Cache-Control": "no-store"})

    # -- POST /event ---------------------------------------------------------------------------------------

    async def event(self, request: web.Request, tenant: Tenant, settings: Settings,
                    client_ip: str | None) -> web.StreamResponse:
        if not allowed_origin(request, settings, tenant):
            raise ApiError(403, "forbidden_origin", "This origin may not send events.")
        self.limits.check(tenant, client_ip)
        data = await self._json(request, tenant, settings, EVENT_BODY_MAX)
        ref = _session_ref(data.pop("session_id", None))  # a site not behind the proxy: the id from /touch
        name, props = parse_event(data)
        cookies = request.cookies
        raw = cookies.get(tenant.cookie.name)
        opened = self.keys.open_session_state(tenant.id, raw) if raw is not None else None
        if opened is not None:
            # Analytics consent as sealed at the last page view, and as the banner's cookies say now: a visitor
            # who withdrew it on this page (no page view since) is not tracked either.
            if (not opened[1] & ANALYTICS
                    or not parse_consent(cookies, request.headers, consent_policy(tenant)).analytics):
                return json_ok(202, {"accepted": False})
            session_id = opened[0]
        else:
            found = self.keys.session_from_ref(tenant.id, ref)
            record = await session_store.get_session(self.events.pool, tenant.id, found) if found else None
            if record is None or not record.consent.analytics:
                return json_ok(202, {"accepted": False})
            session_id = record.id
        await self.events.record(tenant, session_id, name, props, self.clock())
        return json_ok(202, {"accepted": True})


def with_cors(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Answers (errors included) to a listed external origin carry CORS headers echoing it."""

    async def handle(request: web.Request) -> web.StreamResponse:
        origin = listed_origin(request, request[TENANT])
        try:
            response = await handler(request)
        except ApiError as err:
            if origin:
                err.headers = {**(err.headers or {}), **cors_headers(origin)}
            raise
        except InputError as err:  # the parsers' 422, readable by the calling page
            raise ApiError(422, err.code, err.detail, err.field, headers=cors_headers(origin) or None) from err
        if origin:
            response.headers.update(cors_headers(origin))
        return response

    handle.__name__ = getattr(handler, "__name__", "handle")
    return handle


async def preflight(request: web.Request) -> web.StreamResponse:
    """CORS preflight: only a listed external origin, for POST with a JSON body."""
    origin = listed_origin(request, request[TENANT])
    if origin is None:
        raise ApiError(403, "forbidden_origin", "This origin is not one of the site's external_origins.")
    return web.Response(status=204, headers={
        **cors_headers(origin), "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S)})


def setup(app: web.Application, prefix: str, routes: Callable[[], BrowserRoutes | None],
          settings: Callable[[], Settings], script: Script) -> None:
    """Register the browser routes (`common.handler_for`: 404 until storage has started; t.js needs none)."""

    async def handle_script(request: web.Request) -> web.StreamResponse:
        return script.response(request)

    app.router.add_get(f"{prefix}/t.js", handle_script)
    app.router.add_get(f"{prefix}/session", handler_for(BrowserRoutes.session, routes, settings))
    app.router.add_post(f"{prefix}/consent", handler_for(BrowserRoutes.consent, routes, settings))
    for name, body in (("touch", BrowserRoutes.touch), ("event", BrowserRoutes.event)):
        app.router.add_post(f"{prefix}/{name}", with_cors(handler_for(body, routes, settings)))
        app.router.add_route("OPTIONS", f"{prefix}/{name}", preflight)

