"""The client's site: every request outside the reserved prefix is tracked, then forwarded.

`setup` registers the catch-all route (register it last). Its handler admits the request (`admission.admit`:
the trust boundary, the tenant), finds its client address, reads the request's plain facts
(`visit_facts`), asks `services.visits` for the cookies to set, and streams the upstream answer back through
`proxy.Proxy`, which puts the script tag into HTML pages (`inject`). Tracking never breaks the site: if it fails, the page is served untracked and the failure counted.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from ..config import Settings, Tenant
from ..metrics import Metrics
from ..services.visits import VisitTracker
from ..tracking.visit import VisitFacts
from .admission import admit
from .inject import wants_injection
from .proxy import Proxy
from .tenancy import client_address

log = logging.getLogger(__name__)

# Parsed Cookie headers kept per process, and the longest header worth keeping (longer ones are parsed each time).
COOKIE_CACHE_SIZE = 4096
COOKIE_CACHE_MAX_CHARS = 4096

_NO_COOKIES: Mapping[str, str] = MappingProxyType({})
_EMPTY_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


class CookieCache:
    """`request.cookies`, parsed once per distinct Cookie header: a returning visitor sends the same header page
    after page. A bounded LRU; headers longer than COOKIE_CACHE_MAX_CHARS are parsed every time."""

    def __init__(self, size: int = COOKIE_CACHE_SIZE):
        self.size = size
        self._parsed: OrderedDict[str, Mapping[str, str]] = OrderedDict()

    def cookies(self, request: web.Request) -> Mapping[str, str]:
        header = request.headers.get("Cookie")
        if not header:
            return _NO_COOKIES
        cache = self._parsed
        parsed = cache.get(header)
        if parsed is not None:
            cache.move_to_end(header)
            return parsed
        parsed = request.cookies
        if len(header) <= COOKIE_CACHE_MAX_CHARS:
            cache[header] = parsed
            if len(cache) > self.size:
                cache.popitem(last=False)
        return parsed


def visit_facts(request: web.Request, cookies: CookieCache) -> VisitFacts:
    """The request as the visit rules see it."""
    return VisitFacts(request.method, request.path, request.host,
                      request.query if request.query_string else _EMPTY_QUERY, request.headers,
                      cookies.cookies(request))


def setup(app: web.Application, settings: Callable[[], Settings], proxy: Callable[[], Proxy],
          tracker: Callable[[], VisitTracker | None], metrics: Metrics, reserved_prefix: str) -> None:
    cookie_cache = CookieCache()

    async def handle_proxied(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        current = settings()
        tenant = admit(request, current, metrics, reserved_prefix, started)
        if type(tenant) is not Tenant:
            return tenant  # type: ignore[return-value]
        client = client_address(request, current.server.trusted_proxies)
        metrics.in_flight.inc()
        try:
            visits = tracker()
            cookies: list[str] | tuple[()] = ()
            if visits is not None:
                try:
                    cookies = visits.observe(visit_facts(request, cookie_cache), tenant, client.ip, client.https)
                except Exception:  # tracking must never break the client's site: the page is served untracked
                    metrics.tracking_errors.inc()
                    log.exception("tracking failed for a request of tenant %s; serving it untracked", tenant.id)
            inject = reserved_prefix if (tenant.inject_script and request.method == "GET"
                                         and wants_injection(request.headers)) else None
            response = await proxy().forward(request, tenant, client, [("Set-Cookie", value) for value in cookies],
                                             inject)
        finally:
            metrics.in_flight.dec()
        metrics.count_request(tenant.id, response.status, time.perf_counter() - started)
        return response

    app.router.add_route("*", "/{tail:.*}", handle_proxied)
