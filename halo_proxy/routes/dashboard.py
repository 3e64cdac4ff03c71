"""The operators' dashboard under the reserved prefix: `GET /dashboard` (the page, or the sign-in form without a
session), `POST /dashboard/login` (a `report` key for a session cookie), `POST /dashboard/logout`, and
`GET /dashboard/report.csv` (the report's CSV for the session, which holds no bearer key).

The page is server-rendered HTML (views/): no script, no external asset, so it works without JavaScript and
its Content-Security-Policy allows nothing but its own nonce'd stylesheet and forms posting to itself.

Sign-in: the key is read from the form once and never sent back or stored in the browser; the session cookie is
`HttpOnly`, `SameSite=Strict`, scoped to the dashboard's path, `Secure` over HTTPS, and never set by the upstream
(edge/proxy.py drops it from the site's answers). Forms are CSRF-safe: a login or logout whose Origin (else
Referer) is not this very host is refused, and the logout form also carries the session's own CSRF token.
Failed keys count against the same per-IP limit as every operator route.

The dashboard shares its origin with the client's site (it lives under the reserved prefix of the site's own
hosts), so a script of the site could otherwise fetch it. Every dashboard route therefore answers only a
browser navigation (a request whose `Sec-Fetch-Mode` says `fetch`/`cors`/`no-cors`/`same-origin` is refused),
and a tenant may list `dashboard_hosts`: then the dashboard answers only there (a host of its own, whose pages
no site script shares). Cookies planted under the same name (another path or a parent domain) cannot sign the
operator out: every `halo_dashboard` value sent is tried, and none is cleared when several came.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from aiohttp import web

from ..config import Settings, Tenant
from ..edge.admission import CLIENT
from ..edge.proxy import DASHBOARD_COOKIE
from ..operators import OK
from ..services.dashboard import SESSION_HOURS, DashboardSignIn, csrf_matches
from ..services.reports import Reports
from ..storage.dashboard_sessions import DashboardSession
from ..tracking.period import PeriodError
from ..views import render
from ..views.dashboard import QueryError, default_query, page, read_query
from .browser import from_this_page
from .common import ApiError, handler_for, media_type, read_body
from .forms import FormError, parse_urlencoded
from .operators import Guard
from .reports import report_csv, single_parameters

COOKIE = DASHBOARD_COOKIE
FORM_LIMIT = 4096
LATEST = 20
MAX_COOKIE_VALUES = 4

log = logging.getLogger(__name__)

_SIGN_IN_ERRORS = {
    "missing_key": (401, "Enter an operator key."),
    "invalid_key": (401, "This key is not known."),
    "wrong_tenant": (403, "This key belongs to another tenant."),
    "missing_scope": (403, "This key lacks the report scope the dashboard needs."),
}


def _headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
                                    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # the forms need their Origin (no-referrer sends "null")
    }


class DashboardRoutes:
    def __init__(self, sign_in: DashboardSignIn, reports: Reports, guard: Guard, clock: Callable[[], datetime],
                 prefix: str):
        self.sign_in = sign_in
        self.reports = reports
        self.guard = guard
        self.clock = clock
        self.prefix = prefix

    # -- answers ---------------------------------------------------------------------------------------------

    def _html(self, template: str, context: dict[str, object], status: int = 200,
              headers: dict[str, str] | None = None) -> web.Response:
        nonce = secrets.token_urlsafe(16)
        body = render(template, {**context, "nonce": nonce, "prefix": self.prefix})
        return web.Response(status=status, text=body, content_type="text/html", charset="utf-8",
                            headers={**_headers(nonce), **(headers or {})})

    def _sign_in_page(self, tenant: Tenant, error: str | None = None, status: int = 200,
                      headers: dict[str, str] | None = None) -> web.Response:
        return self._html("login.html", {"tenant": tenant.id, "error": error, "session_hours": SESSION_HOURS},
                          status, headers)

    def _cookie(self, response: web.StreamResponse, request: web.Request, value: str, max_age: int) -> None:
        response.set_cookie(COOKIE, value, max_age=max_age, path=f"{self.prefix}/dashboard", httponly=True,
                            samesite="Strict", secure=_https(request))

    def _redirect(self) -> web.Response:
        return web.Response(status=303, headers={"Location": f"{self.prefix}/dashboard", "Cache-Control": "no-store"})

    async def _session(self, request: web.Request, tenant: Tenant) -> tuple[DashboardSession, str] | None:
        """The live session of the first `halo_dashboard` value sent that has one, with its token."""
        for token in _tokens(request):
            found = await self.sign_in.session(tenant, token)
            if found is not None:
                return found, token
        return None

    def _refuse(self, request: web.Request, tenant: Tenant) -> web.Response | None:
        """Not a browser navigation to the dashboard on a host that serves it: the answer, else None."""
        if tenant.dashboard_hosts and (request.host.rsplit(":", 1)[0].lower().rstrip(".")
                                       not in tenant.dashboard_hosts):
            raise ApiError(404, "not_found", "The dashboard of this tenant is served on its dashboard host.")
        mode = request.headers.get("Sec-Fetch-Mode")
        if mode is not None and mode != "navigate":
            return web.Response(status=403, text="The dashboard opens only as a page of its own.\n",
                                headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
        return None

    def _today(self, tenant: Tenant) -> datetime:
        return self.clock().astimezone(ZoneInfo(tenant.timezone))

    # -- routes ----------------------------------------------------------------------------------------------

    async def page(self, request: web.Request, tenant: Tenant, settings: Settings,
                   client_ip: str | None) -> web.StreamResponse:
        refused = self._refuse(request, tenant)
        if refused is not None:
            return refused
        found = await self._session(request, tenant)
        if found is None:
            response = self._sign_in_page(tenant)
            if len(_tokens(request)) == 1:  # one stale cookie: cleared (never several: one may be planted)
                self._cookie(response, request, "", 0)
            return response
        session, _ = found
        today = self._today(tenant).date()
        error = None
        status = 200
        try:
            query = read_query({name: request.query.getall(name) for name in request.query}, today)
            period = self.reports.period(tenant, query.first, query.last)
        except (QueryError, PeriodError) as err:
            error, status = f"{err.field}: {err.detail}", 422
            query = default_query(today)
            period = self.reports.period(tenant, query.first, query.last)
        data = await self.reports.dashboard(tenant, period, query.model, latest=LATEST)
        context = page(data, query, tenant_id=tenant.id, timezone=tenant.timezone, currency=tenant.currency)
        return self._html("dashboard.html", {**context, "csrf": session.csrf, "error": error}, status)

    async def login(self, request: web.Request, tenant: Tenant, settings: Settings,
                    client_ip: str | None) -> web.StreamResponse:
        refused = self._refuse(request, tenant)
        if refused is not None:
            return refused
        if not from_this_page(request, settings, tenant):
            return self._sign_in_page(tenant, "Sign in from the dashboard's own page.", 403)
        fields = await _form(request)
        if fields is None:
            return self._sign_in_page(tenant, "Send the sign-in form as it is.", 422)
        presented = fields.get("key", "").strip() or None
        try:
            verdict = self.guard.check(settings, tenant, client_ip, presented, "report")
        except ApiError as err:  # too many failures from this address
            return self._sign_in_page(tenant, "Too many failed keys from this address; wait a little.", err.status,
                                      err.headers)
        if verdict.outcome != OK:
            status, detail = _SIGN_IN_ERRORS[verdict.outcome]
            return self._sign_in_page(tenant, detail, status)
        token, _ = await self.sign_in.sign_in(tenant, verdict.key)  # type: ignore[arg-type]
        log.info("dashboard sign-in to tenant %s with key %s", tenant.id, verdict.key.name)  # type: ignore[union-attr]
        response = self._redirect()
        self._cookie(response, request, token, SESSION_HOURS * 3600)
        return response

    async def logout(self, request: web.Request, tenant: Tenant, settings: Settings,
                     client_ip: str | None) -> web.StreamResponse:
        refused = self._refuse(request, tenant)
        if refused is not None:
            return refused
        if not from_this_page(request, settings, tenant):
            return self._sign_in_page(tenant, "Sign out from the dashboard's own page.", 403)
        found = await self._session(request, tenant)
        fields = await _form(request)
        if found is not None:
            session, token = found
            if fields is None or not csrf_matches(session, fields.get("csrf")):
                return self._sign_in_page(tenant, "The sign-out form was not this session's.", 403)
            await self.sign_in.sign_out(token)
            log.info("dashboard sign-out from tenant %s (key %s)", tenant.id, session.key_name)
        response = self._redirect()
        self._cookie(response, request, "", 0)
        return response

    async def report_csv(self, request: web.Request, tenant: Tenant, settings: Settings,
                         client_ip: str | None) -> web.StreamResponse:
        refused = self._refuse(request, tenant)
        if refused is not None:
            return refused
        if await self._session(request, tenant) is None:
            return self._redirect()
        params = single_parameters(request, ("from", "to", "model"))
        today = self._today(tenant).date()
        try:
            query = read_query({name: [value] for name, value in params.items()}, today)
            period = self.reports.period(tenant, query.first, query.last)
        except (QueryError, PeriodError) as err:
            raise ApiError(422, "invalid_field", err.detail, err.field) from None
        report = await self.reports.report(tenant, period, query.model)
        name = f"halotrack-{tenant.id}-{query.first}-{query.last}-{query.model}.csv"
        return web.Response(text=report_csv(report), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"',
                                     "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def _https(request: web.Request) -> bool:
    """The visitor's own scheme was HTTPS (directly, or as a trusted TLS proxy says)."""
    return request[CLIENT].https


def _tokens(request: web.Request) -> list[str]:
    """Every `halo_dashboard` value of the Cookie header(s), in order (a browser sends the most specific path
    first), at most a few."""
    found = []
    for header in request.headers.getall("Cookie", ()):
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == COOKIE and value:
                found.append(value.strip('"'))
    return found[:MAX_COOKIE_VALUES]


async def _form(request: web.Request) -> dict[str, str] | None:
    """The urlencoded form of a sign-in or sign-out (at most 4 KB), or None when it is not one."""
    if media_type(request) != "application/x-www-form-urlencoded":
        return None
    try:
        return parse_urlencoded(await read_body(request, FORM_LIMIT))
    except FormError:
        return None


def setup(app: web.Application, prefix: str, routes: Callable[[], DashboardRoutes | None],
          settings: Callable[[], Settings]) -> None:
    app.router.add_get(f"{prefix}/dashboard", handler_for(DashboardRoutes.page, routes, settings))
    app.router.add_post(f"{prefix}/dashboard/login", handler_for(DashboardRoutes.login, routes, settings))
    app.router.add_post(f"{prefix}/dashboard/logout", handler_for(DashboardRoutes.logout, routes, settings))
    app.router.add_get(f"{prefix}/dashboard/report.csv", handler_for(DashboardRoutes.report_csv, routes, settings))
