"""TikTok Events API 2.0: ``POST {base_url}/open_api/v1.3/event/track/`` with the ``Access-Token`` header.

Body ``{"event_source": "web", "event_source_id": <pixel code>, "test_event_code"?, "data": [...]}``, at most 1,000
events; TikTok fails a whole batch for one bad row. Email (trimmed, lowercased), phone (E.164 with ``+``) and
external_id (trimmed, lowercased) are SHA-256 hex; ttclid, ttp, IP and user agent go raw.

Decisions:
- A lead is ``SubmitForm``: the long-standing standard event for a submitted form, available to every pixel
  (``Lead`` is a newer name). An order is ``CompletePayment``.
- MAX_AGE is 7 days. TikTok documents no age limit for Events API 2.0 (the reference marks it UNVERIFIED); 7 days is
  the figure quoted from its legacy web docs and matches Meta's. A conservative bound costs little (a week-old
  conversion is of small value to bidding) and keeps one stale row from failing a whole batch.
- Answers are HTTP 200 with a ``code``: 0 -> ok; 20001 (partial success) -> ok with reason ``partial``: some
  rows were taken and resending the rest unchanged would fail the same way (a resend of the taken rows would be
  deduplicated by event_id anyway); 40100 -> retry (rate limited); 40001 / 40002 -> permanent ``auth``;
  50000-59999 (TikTok's server-side error range) -> retry; any other code -> permanent ``tiktok_error`` with the
  code in ``platform_code``. A non-2xx HTTP status is classified like any other platform's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from halo_proxy.config import TikTokSettings

from . import normalize as n
from .models import ForwardEvent, SendResult, too_old
from .transport import http_result, parse_json, post_json, retry_after, scrub

__all__ = ["MAX_AGE", "MAX_BATCH", "batches", "build_request", "check", "deduplicates", "classify", "event_payload", "send"]

MAX_BATCH = 1000
MAX_AGE = timedelta(days=7)
EVENT_NAMES = {"lead": "SubmitForm", "order": "CompletePayment"}
AUTH_CODES = frozenset({40001, 40002})
RATE_LIMIT_CODE = 40100
PARTIAL_CODE = 20001

Request = tuple[str, str, dict[str, str], dict[str, Any]]


def _user(event: ForwardEvent) -> dict[str, str]:
    user: dict[str, str] = {}
    for key, normalise, value in (
        ("email", n.tiktok_email, event.email),
        ("phone", n.e164_phone, event.phone),
        ("external_id", n.tiktok_external_id, event.external_id),
    ):
        digest = n.hashed(normalise, value)
        if digest:
            user[key] = digest
    for key, value in (("ttclid", event.ttclid), ("ttp", event.ttp), ("ip", event.client_ip),
                       ("user_agent", event.user_agent)):
        if value:
            user[key] = value
    return user


def event_payload(event: ForwardEvent) -> dict[str, Any]:
    """One ``data[]`` item."""
    payload: dict[str, Any] = {
        "event": EVENT_NAMES[event.kind],
        "event_time": int(event.event_time.timestamp()),
        "event_id": event.event_id,
        "user": _user(event),
    }
    if event.event_source_url:
        payload["page"] = {"url": event.event_source_url}
    properties: dict[str, Any] = {}
    if event.value is not None and event.currency:
        properties["value"] = event.value
        properties["currency"] = event.currency.upper()
    if event.order_id:
        properties["order_id"] = event.order_id
    if properties:
        payload["properties"] = properties
    return payload


def deduplicates(event: ForwardEvent) -> bool:
    """TikTok drops a second event with the same `event_id` (within 48 hours)."""
    return True


def check(event: ForwardEvent, now: datetime) -> SendResult | None:
    """A permanent result for an event older than MAX_AGE or with nothing to match on, else None."""
    old = too_old(event, now, MAX_AGE)
    if old:
        return old
    if not _user(event):
        return SendResult("permanent", "no_identifiers", detail="no customer information to match on")
    return None


def batches(events: Sequence[ForwardEvent]) -> list[list[ForwardEvent]]:
    """Events in request-sized groups of at most MAX_BATCH, in order."""
    return [list(events[i:i + MAX_BATCH]) for i in range(0, len(events), MAX_BATCH)]


def build_request(settings: TikTokSettings, events: Sequence[ForwardEvent]) -> Request:
    """(method, url, headers, json body) for one batch; the token goes in the Access-Token header."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"a TikTok request carries 1 to {MAX_BATCH} events, got {len(events)}")
    body: dict[str, Any] = {"event_source": "web", "event_source_id": settings.pixel_code}
    if settings.test_event_code:
        body["test_event_code"] = settings.test_event_code
    body["data"] = [event_payload(e) for e in events]
    headers = {"Content-Type": "application/json", "Access-Token": settings.access_token}
    return "POST", f"{settings.base_url.rstrip('/')}/open_api/v1.3/event/track/", headers, body


def classify(status: int, headers: Mapping[str, str], body: bytes) -> SendResult:
    """TikTok's answer as ok / retry / permanent (see the module docstring for the codes)."""
    if not 200 <= status < 300:
        return http_result(status, headers)
    data = parse_json(body)
    code = data.get("code") if isinstance(data, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        return SendResult("retry", "bad_response", retry_after(headers), "2xx answer without a code", status)
    detail = f"TikTok code {code}: {scrub(data.get('message', ''))}"
    platform_code = str(code)
    if code == 0:
        return SendResult("ok", "ok", status=status, platform_code=platform_code)
    if code == PARTIAL_CODE:
        return SendResult("ok", "partial", None, detail, status, platform_code)
    if code == RATE_LIMIT_CODE:
        return SendResult("retry", "tiktok_rate_limited", retry_after(headers), detail, status, platform_code)
    if code in AUTH_CODES:
        return SendResult("permanent", "auth", None, detail, status, platform_code)
    if 50000 <= code <= 59999:
        return SendResult("retry", "tiktok_server_error", retry_after(headers), detail, status, platform_code)
    return SendResult("permanent", "tiktok_error", None, detail, status, platform_code)


async def send(session: aiohttp.ClientSession, settings: TikTokSettings, events: Sequence[ForwardEvent],
               timeout: float) -> SendResult:  # noqa: ASYNC109 - a per-request ClientTimeout, not a cancel scope
    """Posts one batch (see `batches`) and classifies the answer; timeouts and network errors -> retry."""
    return await post_json(session, build_request(settings, events), timeout, classify)
