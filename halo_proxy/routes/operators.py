"""Operator routes under the reserved prefix: `DELETE /delete-user` and `GET /export-user` (scope `privacy`). Report, export and the
dashboard land here too.

Every operator route takes `Authorization: Bearer <key>` (`operators.check_key`): no or an unknown key 401, a key of
this tenant without the route's scope or a key of another tenant 403, whatever Host it is sent to. Failed attempts
are counted (`halo_operator_auth_failures_total{reason}`) and limited per client IP: past a burst of 10 failures,
the address gets 429 (with Retry-After) before any key it sends is even looked at, one more try every 5 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from ..config import ApiKey, Settings, Tenant
from ..metrics import Metrics
from ..operators import MISSING, OK, WRONG_TENANT, Verdict, bearer, check_key
from ..ratelimit import TokenBucket, retry_after_header
from ..services.privacy import Privacy
from ..tracking.identity import normalise_email, normalise_phone
from .common import ApiError, handler_for, json_ok

FAILURES_BURST = 10
FAILURES_PER_S = 0.2

_DETAILS = {
    MISSING: (401, "Send Authorization: Bearer <key> (halo-proxy hash-key makes one)."),
    "invalid_key": (401, "This key is not known."),
    WRONG_TENANT: (403, "This key belongs to another tenant."),
    "missing_scope": (403, "This key lacks the scope this route needs."),
}


class Guard:
    """The bearer-key check of every operator route, with the per-IP limit on failures."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic):
        self.failures = TokenBucket(FAILURES_PER_S, FAILURES_BURST)
        self.counter = metrics.operator_auth_failures
        self.clock = clock

    def check(self, settings: Settings, tenant: Tenant, client_ip: str | None, presented: str | None,
              scope: str) -> Verdict:
        """Whose key `presented` is, a failure counted against the address; ApiError 429 (with Retry-After)
        when the address has failed too often, before the key is looked at."""
        address = client_ip or "unknown"
        now = self.clock()
        wait = self.failures.wait(address, now)
        if wait > 0:
            self.counter.labels(reason="rate_limited").inc()
            raise ApiError(429, "rate_limited", "Too many failed key attempts from this address; wait.",
                           headers={"Retry-After": retry_after_header(wait)})
        verdict = check_key(settings, tenant, presented, scope)
        if verdict.outcome != OK:
            self.failures.take(address, now)
            self.counter.labels(reason=verdict.outcome).inc()
        return verdict

    def require(self, request: web.Request, settings: Settings, tenant: Tenant, client_ip: str | None,
                scope: str) -> ApiKey:
        """The key of the request's `Authorization: Bearer` header, or the contract's 401 / 403 / 429."""
        sent = request.headers.getall("Authorization", ())
        verdict = self.check(settings, tenant, client_ip, bearer(sent[0]) if len(sent) == 1 else None, scope)
        if verdict.outcome == OK:
            return verdict.key  # type: ignore[return-value]
        status, detail = _DETAILS[verdict.outcome]
        headers = {"WWW-Authenticate": 'Bearer realm="halotrack"'} if status == 401 else None
        raise ApiError(status, verdict.outcome, detail, headers=headers)


class OperatorRoutes:
    def __init__(self, privacy: Privacy, guard: Guard):
        self.privacy = privacy
        self.guard = guard

    async def delete_user(self, request: web.Request, tenant: Tenant, settings: Settings,
                          client_ip: str | None) -> web.StreamResponse:
        key = self.guard.require(request, settings, tenant, client_ip, "privacy")
        email, phone = person(request, tenant)
        return json_ok(200, await self.privacy.erase(tenant, email, phone, key.name))

    async def export_user(self, request: web.Request, tenant: Tenant, settings: Settings,
                          client_ip: str | None) -> web.StreamResponse:
        key = self.guard.require(request, settings, tenant, client_ip, "privacy")
        email, phone = person(request, tenant)
        return json_ok(200, await self.privacy.export(tenant, email, phone, key.name),
                       headers={"Cache-Control": "no-store"})


def person(request: web.Request, tenant: Tenant) -> tuple[str | None, str | None]:
    """The `email` and/or `phone` query parameters, normalised (any format of the same number is the same phone);
    422 naming the field when neither is given or one is malformed."""
    query = request.query
    unknown = sorted(set(query) - {"email", "phone"})
    if unknown:
        raise ApiError(422, "unknown_field", f"Unknown parameter {unknown[0]}; send email or phone.", unknown[0])
    for name in ("email", "phone"):
        if len(query.getall(name, ())) > 1:
            raise ApiError(422, "invalid_field", f"Send {name} once: one person per request.", name)
    raw_email, raw_phone = query.get("email", "").strip(), query.get("phone", "")
    if raw_phone[:1] == " " and raw_phone[1:2].isdigit():
        raw_phone = "+" + raw_phone[1:]  # an unencoded "+" of an international number arrives as a space
    raw_phone = raw_phone.strip()
    if not raw_email and not raw_phone:
        raise ApiError(422, "missing_field", "Send email or phone: whom to act on.", "email")
    email = normalise_email(raw_email) if raw_email else None
    phone = normalise_phone(raw_phone, tenant.default_phone_region) if raw_phone else None
    return email, phone


def setup(app: web.Application, prefix: str, routes: Callable[[], OperatorRoutes | None],
          settings: Callable[[], Settings]) -> None:
    app.router.add_delete(f"{prefix}/delete-user", handler_for(OperatorRoutes.delete_user, routes, settings))
    app.router.add_get(f"{prefix}/export-user", handler_for(OperatorRoutes.export_user, routes, settings))
