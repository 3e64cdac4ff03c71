"""Google Ads offline conversions through the Data Manager API: ``POST {base_url}/v1/events:ingest``.

(The Google Ads API's ``uploadClickConversions`` stopped accepting requests after 2026-06-15.) Auth is an OAuth
bearer token with the ``datamanager`` scope; no developer token. The destination is the operating Google Ads
account and the conversion action id (``productDestinationId``), with ``loginAccount`` when a manager account is
configured. User identifiers are SHA-256 hex (``encoding: HEX``): email with Google's gmail rules, phone in
E.164 with ``+``. Consent uses ``CONSENT_GRANTED`` / ``CONSENT_DENIED`` (google.ads.datamanager.v1.ConsentStatus).

Data Manager fails fast: one invalid event rejects the whole request, so `check` screens events first
(too old; no click id and no email or phone, which Data Manager refuses as ``NO_IDENTIFIERS_PROVIDED``).

Decisions:
- MAX_AGE is 90 days: the longest click-through conversion window a Google Ads conversion action can have,
  and the click always precedes the conversion, so an older conversion can no longer be credited to any click.
- One ad identifier per event, in the order gclid, wbraid, gbraid: Google refuses gbraid with wbraid, and
  whether gclid may be combined with a braid is not documented.
- ``transactionId`` is the order id, else the event id (stable across retries).
- A visitor who denied ``ad_user_data`` gets no hashed email or phone in the request (GA4 likewise), only the
  click id and the consent saying so.
- Errors: ``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL`` (and any 5xx / 408 / 429)
  -> retry; ``INVALID_ARGUMENT``, ``PERMISSION_DENIED``, ``UNAUTHENTICATED``, ``NOT_FOUND`` and other 4xx ->
  permanent. The reason is ``google_<status>``; a RetryInfo ``retryDelay`` or a Retry-After header is the floor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from halo_proxy.config import GoogleAdsSettings

from . import normalize as n
from .models import GOOGLE_STATUSES, ForwardEvent, SendResult, too_old
from .transport import http_result, parse_json, post_json, retry_after, scrub

__all__ = ["MAX_AGE", "MAX_BATCH", "MAX_USER_IDENTIFIERS", "ad_identifiers", "batches", "build_request", "check", "deduplicates",
           "classify", "event_payload", "rfc3339", "send", "user_identifiers"]

MAX_BATCH = 2000
MAX_AGE = timedelta(days=90)
MAX_USER_IDENTIFIERS = 10
RETRY_STATUSES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"})
PERMANENT_STATUSES = frozenset({"INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND"})
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)s$")

Request = tuple[str, str, dict[str, str], dict[str, Any]]


def rfc3339(when: datetime) -> str:
    """UTC, ``Z``-suffixed, fractional seconds only when there are any: ``2026-03-01T12:00:00Z``."""
    utc = when.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def ad_identifiers(event: ForwardEvent) -> dict[str, str]:
    """At most one click id: gclid, else wbraid, else gbraid (never both braids)."""
    for key in ("gclid", "wbraid", "gbraid"):
        value = getattr(event, key)
        if value:
            return {key: value}
    return {}


def user_identifiers(event: ForwardEvent) -> list[dict[str, str]]:
    """``[{"emailAddress": hex}, {"phoneNumber": hex}]`` for what is known; each entry holds one identifier.

    Empty when the visitor denied ad_user_data: identifiers they refused to share are not sent at all.
    """
    out: list[dict[str, str]] = []
    if event.ad_user_data is False:
        return out
    email = n.hashed(n.google_email, event.email)
    if email:
        out.append({"emailAddress": email})
    phone = n.hashed(n.e164_phone, event.phone)
    if phone:
        out.append({"phoneNumber": phone})
    return out[:MAX_USER_IDENTIFIERS]


def _consent(event: ForwardEvent) -> dict[str, str]:
    out = {}
    for flag, key in ((event.ad_user_data, "adUserData"), (event.ad_personalization, "adPersonalization")):
        if flag is not None:
            out[key] = "CONSENT_GRANTED" if flag else "CONSENT_DENIED"
    return out


def event_payload(event: ForwardEvent) -> dict[str, Any]:
    """One ``events[]`` item of an IngestEventsRequest."""
    payload: dict[str, Any] = {
        "eventTimestamp": rfc3339(event.event_time),
        "transactionId": event.order_id or event.event_id,
        "eventSource": "WEB",
    }
    ids = ad_identifiers(event)
    if ids:
        payload["adIdentifiers"] = ids
    if event.value is not None:
        payload["conversionValue"] = event.value
    if event.currency:
        payload["currency"] = event.currency.upper()
    identifiers = user_identifiers(event)
    if identifiers:
        payload["userData"] = {"userIdentifiers": identifiers}
    consent = _consent(event)
    if consent:
        payload["consent"] = consent
    return payload


def deduplicates(event: ForwardEvent) -> bool:
    """Google Ads keeps one conversion per `transactionId` (the order id, else the event id) and action."""
    return True


def check(event: ForwardEvent, now: datetime) -> SendResult | None:
    """A permanent result when Data Manager would refuse this event (and its whole request), else None."""
    old = too_old(event, now, MAX_AGE)
    if old:
        return old
    if not ad_identifiers(event) and not user_identifiers(event):
        return SendResult("permanent", "no_identifiers", detail="no click id, email or phone to match on")
    return None


def batches(events: Sequence[ForwardEvent]) -> list[list[ForwardEvent]]:
    """Events in request-sized groups of at most MAX_BATCH, in order."""
    return [list(events[i:i + MAX_BATCH]) for i in range(0, len(events), MAX_BATCH)]


def _account_id(value: str) -> str:
    return value.replace("-", "").strip()


def build_request(settings: GoogleAdsSettings, events: Sequence[ForwardEvent]) -> Request:
    """(method, url, headers, json body) for one batch; the token goes in the Authorization header."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"a Data Manager request carries 1 to {MAX_BATCH} events, got {len(events)}")
    destination: dict[str, Any] = {
        "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": _account_id(settings.account_id)},
        "productDestinationId": settings.conversion_action_id.strip(),
    }
    if settings.login_account_id:
        destination["loginAccount"] = {"accountType": "GOOGLE_ADS",
                                       "accountId": _account_id(settings.login_account_id)}
    body = {"destinations": [destination], "encoding": "HEX", "events": [event_payload(e) for e in events]}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {settings.access_token}"}
    return "POST", f"{settings.base_url.rstrip('/')}/v1/events:ingest", headers, body


def _retry_delay(details: Any) -> float | None:
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION_RE.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _describe(error: Mapping[str, Any]) -> str:
    parts = [str(error.get("status") or error.get("code") or "error")]
    for item in error.get("details") or []:
        if not isinstance(item, dict):
            continue
        if item.get("reason"):
            parts.append(scrub(item["reason"], 60))
        for violation in item.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field"):
                parts.append(f"field {scrub(violation['field'], 80)}")
    message = scrub(error.get("message", ""))
    return ", ".join(parts) + (f": {message}" if message else "")


def classify(status: int, headers: Mapping[str, str], body: bytes) -> SendResult:
    """Data Manager's answer as ok / retry / permanent."""
    data = parse_json(body)
    if 200 <= status < 300:
        return SendResult("ok", "ok", status=status,
                          detail="request accepted" if isinstance(data, dict) and data.get("requestId") else "")
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return http_result(status, headers, detail=f"HTTP {status} without a Google error object")
    name = error.get("status")
    detail = _describe(error)
    if name not in GOOGLE_STATUSES:
        return http_result(status, headers, detail)
    after = retry_after(headers)
    delay = _retry_delay(error.get("details"))
    if delay is not None:
        after = max(after or 0.0, delay)
    reason = f"google_{name.lower()}"
    if name in RETRY_STATUSES or (name not in PERMANENT_STATUSES and (status in (408, 429) or status >= 500)):
        return SendResult("retry", reason, after, detail, status, name)
    return SendResult("permanent", reason, None, detail, status, name)


async def send(session: aiohttp.ClientSession, settings: GoogleAdsSettings, events: Sequence[ForwardEvent],
               timeout: float) -> SendResult:  # noqa: ASYNC109 - a per-request ClientTimeout, not a cancel scope
    """Posts one batch (see `batches`) and classifies the answer; timeouts and network errors -> retry."""
    return await post_json(session, build_request(settings, events), timeout, classify)
