"""Browser routes under the reserved prefix: `POST /event` (`HaloTrack.track`). More of the browser side
(`t.js`, `/touch`, `/consent`) lands here.

A browser route checks the Origin (a tenant host or a listed external origin), is rate limited per client IP
(the same buckets as identify), reads a small bounded JSON body (`text/plain` too: `navigator.sendBeacon` sends
that without a preflight), names every bad field (422), and stores nothing on failure.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from ..config import Settings, Tenant
from ..crypto import KeyRing
from ..services.events import Events
from ..services.visits import consent_policy
from ..tracking.consent import ConsentPolicy, parse_consent
from ..tracking.events import parse_event
from .common import ApiError, handler_for, json_ok, media_type, parse_json_object, read_body
from .conversions import IDENTIFY_TYPES, RateLimits, allowed_origin

EVENT_BODY_MAX = 8 * 1024  # name, props (2 KB as JSON) and their escapes

ANALYTICS = 1  # the consent bit sealed in the _halo cookie (tracking.visit.consent_bits)


class BrowserRoutes:
    def __init__(self, events: Events, keys: KeyRing, limits: RateLimits, clock: Callable[[], datetime]):
        self.events = events
        self.keys = keys
        self.limits = limits
        self.clock = clock

    @staticmethod
    def policy(tenant: Tenant) -> ConsentPolicy:
        return consent_policy(tenant)

    async def event(self, request: web.Request, tenant: Tenant, settings: Settings,
                    client_ip: str | None) -> web.StreamResponse:
        if not allowed_origin(request, settings, tenant):
            raise ApiError(403, "forbidden_origin", "This origin may not send events.")
        self.limits.check(tenant, client_ip)
        if media_type(request) not in IDENTIFY_TYPES:
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
        body = await read_body(request, min(tenant.max_body_bytes, EVENT_BODY_MAX),
                               settings.server.client.body_timeout_s)
        name, props = parse_event(parse_json_object(body))
        cookies = request.cookies
        raw = cookies.get(tenant.cookie.name)
        opened = self.keys.open_session_state(tenant.id, raw) if raw is not None else None
        # Analytics consent as sealed at the last page view, and as the banner's cookies say now: a visitor who
        # withdrew it on this page (no page view since) is not tracked either.
        if (opened is None or not opened[1] & ANALYTICS
                or not parse_consent(cookies, request.headers, self.policy(tenant)).analytics):
            return json_ok(202, {"accepted": False})
        await self.events.record(tenant, opened[0], name, props, self.clock())
        return json_ok(202, {"accepted": True})


def setup(app: web.Application, prefix: str, routes: Callable[[], BrowserRoutes | None],
          settings: Callable[[], Settings]) -> None:
    """Register the browser routes (`common.handler_for`: 404 until storage has started)."""
    app.router.add_post(f"{prefix}/event", handler_for(BrowserRoutes.event, routes, settings))
