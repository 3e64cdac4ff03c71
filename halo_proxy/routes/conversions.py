"""Conversion routes under the reserved prefix: identify, leads, orders, Shopify and Stripe.

Each route: bounded body, content type, signature or same-origin check, validation, then the conversion is
committed before the 2xx answer. Browser-facing routes are rate limited per client IP. The tenant and the client
come from the admission middlewares; errors are answered by `common.setup_error_answers`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from ..config import Settings, Tenant
from ..crypto import KeyRing, SignatureError, verify_shopify, verify_stripe, verify_webhook
from ..edge.boundary import local_path, parse_url
from ..ratelimit import TokenBucket, retry_after_header
from ..services.conversions import NOT_TRACKED, Conversions
from ..services.visits import Clock, consent_policy
from ..tracking.adapters import AdapterResult, parse_shopify_order, parse_stripe_event
from ..tracking.consent import parse_consent
from ..tracking.conversion import form_redirect, parse_lead, parse_order
from ..tracking.identity import normalise_email, normalise_phone
from ..tracking.models import Consent
from . import forms
from .common import ApiError, handler_for, json_ok, media_type, parse_json_object, read_body, require_json

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
IDENTIFY_TYPES = ("application/json", "text/plain")  # text/plain: navigator.sendBeacon without a preflight


class RateLimits:
    """One token bucket per tenant, keyed by client IP; rebuilt when the tenant's limits change."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[tuple[float, int], TokenBucket]] = {}

    def check(self, tenant: Tenant, client_ip: str | None) -> None:
        limit = (tenant.rate_limit.per_second, tenant.rate_limit.burst)
        entry = self._buckets.get(tenant.id)
        if entry is None or entry[0] != limit:
            entry = (limit, TokenBucket(limit[0], limit[1]))
            self._buckets[tenant.id] = entry
        allowed, retry_after = entry[1].take(client_ip or "unknown", time.monotonic())
        if not allowed:
            raise ApiError(429, "rate_limited", "Too many requests from this address; slow down.",
                           headers={"Retry-After": retry_after_header(retry_after)})


# ---------------------------------------------------------------------------------------------------------
# Helpers.


def _url_host(url: str | None) -> str | None:
    """The host name of an absolute http(s) URL, parsed strictly (`edge.boundary.parse_url`), or None."""
    parsed = parse_url(url)
    return parsed.host.name if parsed is not None else None


def same_origin(request: web.Request, settings: Settings, tenant: Tenant) -> bool:
    """The form was posted from a page of this tenant: its Origin (else Referer) host is a tenant host."""
    origin = request.headers.get("Origin")
    host = _url_host(origin) if origin and origin != "null" else _url_host(request.headers.get("Referer"))
    return host is not None and settings.tenant_for_name(host) is tenant


def allowed_origin(request: web.Request, settings: Settings, tenant: Tenant) -> bool:
    """For browser JSON routes: no Origin (same-origin navigation or a server), a tenant host, or an external
    origin listed for the tenant."""
    origin = request.headers.get("Origin")
    if not origin:
        return True
    if origin.rstrip("/").lower() in tenant.external_origins:
        return True
    host = _url_host(origin)
    return host is not None and settings.tenant_for_name(host) is tenant


def redirect_target(request: web.Request, settings: Settings, tenant: Tenant, wanted: str | None) -> str:
    """Where a form post goes next: `_redirect` on a tenant host (or a local path), else the Referer, else `/`.
    Both URL forms go through the one strict parser, so `http://shop:1@evil.com/` or `/\\evil.com` never
    leave the tenant's hosts."""
    for candidate in (wanted, request.headers.get("Referer")):
        if not candidate:
            continue
        if local_path(candidate):
            return candidate
        host = _url_host(candidate)
        if host is not None and settings.tenant_for_name(host) is tenant:
            return candidate
    return "/"


def parse_form(body: bytes, content_type_header: str) -> dict[str, str]:
    """First value of each field of an urlencoded or multipart form (`forms`). Files are ignored."""
    try:
        if forms.media_type(content_type_header) == "application/x-www-form-urlencoded":
            return forms.parse_urlencoded(body)
        return forms.parse_multipart(body, content_type_header)
    except forms.FormError as err:
        raise ApiError(400, "invalid_form", err.detail, field=err.field) from err


def _verify(kind: str, secret: str | None, request: web.Request, body: bytes, now: float) -> None:
    if not secret:
        raise ApiError(401, "not_configured", f"This tenant has no {kind} secret configured.")
    try:
        if kind == "webhook":
            verify_webhook(secret, request.headers.get("X-Halo-Signature"), body, now)
        elif kind == "stripe":
            verify_stripe(secret, request.headers.get("Stripe-Signature"), body, now)
        else:
            verify_shopify(secret, request.headers.get("X-Shopify-Hmac-Sha256"), body)
    except SignatureError as err:
        code = "stale_signature" if err.reason == "stale" else (
            "missing_signature" if err.reason == "missing" else "bad_signature")
        raise ApiError(401, code, str(err)) from err


def _tracked(consent: Consent) -> bool:
    return consent.analytics or consent.marketing


def _answer(recorded: Any) -> web.Response:
    return json_ok(201 if recorded.created else 200, recorded.body)


# ---------------------------------------------------------------------------------------------------------
# Route bodies: each takes the request, its tenant, the live settings and the client IP.


class Routes:
    def __init__(self, conversions: Conversions, keys: KeyRing, limits: RateLimits, clock: Clock):
        self.conversions = conversions
        self.keys = keys
        self.limits = limits
        self.clock = clock

    def cookie_session(self, request: web.Request, tenant: Tenant) -> uuid.UUID | None:
        value = request.cookies.get(tenant.cookie.name)
        return self.keys.open_session(tenant.id, value) if value is not None else None

    def now(self) -> datetime:
        return self.clock()

    async def identify(self, request: web.Request, tenant: Tenant, settings: Settings,
                       client_ip: str | None) -> web.StreamResponse:
        if not allowed_origin(request, settings, tenant):
            raise ApiError(403, "forbidden_origin", "This origin may not call identify.")
        self.limits.check(tenant, client_ip)
        if media_type(request) not in IDENTIFY_TYPES:
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
        data = parse_json_object(await read_body(request, tenant.max_body_bytes, settings.server.client.body_timeout_s))
        unknown = set(data) - {"email", "phone", "session_id"}
        if unknown:
            name = sorted(unknown)[0]
            raise ApiError(422, "unknown_field", f"Unknown field {name}; send email, phone and session_id.", name)
        email_raw, phone_raw = data.get("email"), data.get("phone")
        if email_raw in (None, "") and phone_raw in (None, ""):
            raise ApiError(422, "missing_field", "Send an email or a phone to link.", "email")
        email_norm = normalise_email(email_raw) if email_raw not in (None, "") else None
        phone_norm = normalise_phone(phone_raw, tenant.default_phone_region) \
            if phone_raw not in (None, "") else None
        cookies = request.cookies
        raw = cookies.get(tenant.cookie.name)
        opened = self.keys.open_session_state(tenant.id, raw) if raw is not None else None
        if opened is not None and not (opened[1] & 3 and _tracked(
                parse_consent(cookies, request.headers, consent_policy(tenant)))):
            # the visitor's consent, as sealed at the last page view or as the banner's cookies say now, is gone
            return json_ok(200, {"session_id": None, "linked": []})
        session_id = opened[0] if opened is not None else None
        if session_id is None:
            ref = data.get("session_id")
            if ref is not None and not isinstance(ref, str):
                raise ApiError(422, "invalid_field", "session_id must be a string.", "session_id")
            session_id = self.conversions.session_from_ref(tenant, ref)
        if session_id is None:
            raise ApiError(422, "missing_field", "No visitor session: send the _halo cookie or a session_id.",
                           "session_id")
        linked = await self.conversions.identify(tenant, session_id, email_norm, phone_norm, self.now())
        if linked is None:
            raise ApiError(404, "session_not_found", "No session with this id is known.", "session_id")
        if linked is NOT_TRACKED:
            return json_ok(200, {"session_id": None, "linked": []})
        return json_ok(200, {"session_id": str(session_id), "linked": linked})

    async def lead(self, request: web.Request, tenant: Tenant, settings: Settings,
                   client_ip: str | None) -> web.StreamResponse:
        kind = media_type(request)
        if kind in FORM_TYPES:
            return await self._form_lead(request, tenant, settings, client_ip)
        data, now = await self._signed_json(request, tenant, settings, "webhook", tenant.webhook_secret)
        conversion = parse_lead(data, source="api", default_region=tenant.default_phone_region,
                                default_currency=tenant.currency)
        return _answer(await self.conversions.record(tenant, conversion, None, now))

    async def _form_lead(self, request: web.Request, tenant: Tenant, settings: Settings,
                         client_ip: str | None) -> web.StreamResponse:
        if not same_origin(request, settings, tenant):
            raise ApiError(403, "forbidden_origin", "Forms may be posted only from the site's own pages.")
        self.limits.check(tenant, client_ip)
        body = await read_body(request, tenant.max_body_bytes, settings.server.client.body_timeout_s)
        fields = parse_form(body, request.headers.get("Content-Type", ""))
        cookie_session = self.cookie_session(request, tenant)
        conversion = parse_lead(fields, source="form", default_region=tenant.default_phone_region,
                                default_currency=tenant.currency, session_known=cookie_session is not None)
        await self.conversions.record(tenant, conversion, cookie_session, self.now(),
                                      gpc=request.headers.get("Sec-GPC", "").strip() == "1")
        target = redirect_target(request, settings, tenant, form_redirect(fields))
        raise web.HTTPSeeOther(location=target)

    async def order(self, request: web.Request, tenant: Tenant, settings: Settings,
                    client_ip: str | None) -> web.StreamResponse:
        data, now = await self._signed_json(request, tenant, settings, "webhook", tenant.webhook_secret)
        conversion = parse_order(data, default_region=tenant.default_phone_region,
                                 default_currency=tenant.currency, now=now)
        return _answer(await self.conversions.record(tenant, conversion, None, now))

    async def shopify(self, request: web.Request, tenant: Tenant, settings: Settings,
                      client_ip: str | None) -> web.StreamResponse:
        if not tenant.shopify_secret:
            raise ApiError(404, "not_found", "Shopify webhooks are not enabled for this tenant.")
        data, now = await self._signed_json(request, tenant, settings, "shopify", tenant.shopify_secret)
        result = parse_shopify_order(data, topic=request.headers.get("X-Shopify-Topic"),
                                     default_region=tenant.default_phone_region,
                                     default_currency=tenant.currency, now=now)
        return await self._adapter_answer(tenant, result, now)

    async def stripe(self, request: web.Request, tenant: Tenant, settings: Settings,
                     client_ip: str | None) -> web.StreamResponse:
        if not tenant.stripe_secret:
            raise ApiError(404, "not_found", "Stripe webhooks are not enabled for this tenant.")
        data, now = await self._signed_json(request, tenant, settings, "stripe", tenant.stripe_secret)
        result = parse_stripe_event(data, default_region=tenant.default_phone_region,
                                    default_currency=tenant.currency, now=now)
        return await self._adapter_answer(tenant, result, now)

    async def _signed_json(self, request: web.Request, tenant: Tenant, settings: Settings, kind: str,
                           secret: str | None) -> tuple[dict[str, Any], datetime]:
        """A server's signed JSON body: content type, bounded body, signature over the bytes as sent, then
        the JSON object; with the time the signature was checked against."""
        require_json(request)
        body = await read_body(request, tenant.max_body_bytes, settings.server.client.body_timeout_s)
        now = self.now()
        _verify(kind, secret, request, body, now.timestamp())
        return parse_json_object(body), now

    async def _adapter_answer(self, tenant: Tenant, result: AdapterResult, now: datetime) -> web.Response:
        if result.conversion is None:
            return json_ok(200, {"received": True, "ignored": result.ignored or "not a conversion"})
        return _answer(await self.conversions.record(tenant, result.conversion, None, now))


# ---------------------------------------------------------------------------------------------------------

def setup(app: web.Application, prefix: str, routes: Callable[[], Routes | None],
          settings: Callable[[], Settings]) -> None:
    """Register the conversion routes (`common.handler_for`: 404 until storage has started)."""
    for path, body in (("/identify", Routes.identify), ("/webhook/lead", Routes.lead),
                       ("/webhook/order", Routes.order), ("/webhook/shopify", Routes.shopify),
                       ("/webhook/stripe", Routes.stripe)):
        app.router.add_post(prefix + path, handler_for(body, routes, settings))
