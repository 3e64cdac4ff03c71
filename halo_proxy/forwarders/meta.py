"""Meta Conversions API: ``POST {base_url}/{api_version}/{pixel_id}/events?access_token=...``.

Body ``{"data": [server events], "test_event_code"?}``. One invalid event makes Meta reject the whole batch, and
an event older than 7 days fails the whole request, so `check` screens each event before it is batched.

Decisions:
- ``action_source`` is ``website`` when the event has both the visitor's user agent and the page URL (Meta
  requires both for website events); a conversion posted by a server without a browser session is sent as
  ``other`` instead of being refused by Meta.
- fbc: the `_fbc` cookie when present, else built as ``fb.1.<ms>.<fbclid>`` (subdomain index 1, as Meta says for
  values generated on a server) with the time the fbclid was first seen, or the event time.
- Errors: ``is_transient: true`` or codes 1, 2 -> retry (``meta_transient``); 4, 17, 341 -> retry
  (``meta_throttled``); HTTP 5xx / 408 / 429 -> retry (Retry-After as the floor); otherwise permanent:
  ``meta_code_100`` (invalid parameter), ``meta_code_190`` (token), ``meta_permission`` (10, 200-299),
  ``meta_error`` for any other code (the code itself is in ``platform_code``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from halo_proxy.config import MetaSettings

from . import normalize as n
from .models import ForwardEvent, SendResult, too_old
from .transport import http_result, parse_json, post_json, retry_after, scrub

__all__ = ["MAX_AGE", "MAX_BATCH", "batches", "build_request", "check", "deduplicates", "classify", "event_payload", "fbc_for",
           "send", "user_data"]

MAX_BATCH = 1000
MAX_AGE = timedelta(days=7)
EVENT_NAMES = {"lead": "Lead", "order": "Purchase"}
TRANSIENT_CODES = frozenset({1, 2})
THROTTLE_CODES = frozenset({4, 17, 341})

Request = tuple[str, str, dict[str, str], dict[str, Any]]


def fbc_for(event: ForwardEvent) -> str | None:
    """The `_fbc` cookie, else ``fb.1.<creation ms>.<fbclid>`` from the click id (kept exactly as received)."""
    if event.fbc:
        return event.fbc
    if not event.fbclid:
        return None
    seen = event.fbclid_seen_at or event.event_time
    return f"fb.1.{int(seen.timestamp() * 1000)}.{event.fbclid}"


def user_data(event: ForwardEvent) -> dict[str, Any]:
    """Meta ``user_data``: customer information hashed as Meta documents; IP, user agent, fbc, fbp raw."""
    out: dict[str, Any] = {}
    em = n.hashed(n.meta_email, event.email)
    if em:
        out["em"] = [em]
    ph = n.hashed(n.meta_phone, event.phone)
    if ph:
        out["ph"] = [ph]
    zp_normalise = lambda raw: n.meta_zip(raw, event.country)  # noqa: E731
    for key, normalise, value in (
        ("fn", n.meta_name, event.first_name),
        ("ln", n.meta_name, event.last_name),
        ("ct", n.meta_city, event.city),
        ("st", n.meta_state, event.region),
        ("zp", zp_normalise, event.postal_code),
        ("country", n.meta_country, event.country),
        ("external_id", n.meta_external_id, event.external_id),
    ):
        digest = n.hashed(normalise, value)
        if digest:
            out[key] = digest
    if event.client_ip:
        out["client_ip_address"] = event.client_ip
    if event.user_agent:
        out["client_user_agent"] = event.user_agent
    fbc = fbc_for(event)
    if fbc:
        out["fbc"] = fbc
    if event.fbp:
        out["fbp"] = event.fbp
    return out


def event_payload(event: ForwardEvent) -> dict[str, Any]:
    """One server event of the ``data`` array."""
    website = bool(event.user_agent and event.event_source_url)
    payload: dict[str, Any] = {
        "event_name": EVENT_NAMES[event.kind],
        "event_time": int(event.event_time.timestamp()),
        "event_id": event.event_id,
        "action_source": "website" if website else "other",
        "user_data": user_data(event),
    }
    if event.event_source_url:
        payload["event_source_url"] = event.event_source_url
    custom: dict[str, Any] = {}
    if event.value is not None and event.currency:
        custom["value"] = event.value
        custom["currency"] = event.currency.upper()
    if event.order_id:
        custom["order_id"] = event.order_id
    if custom:
        payload["custom_data"] = custom
    return payload


# Meta's baseline for matching (Graph API v13.0 on): customer information made only of one of these sets, or of
# part of one, is refused; any other parameter beside them (an email, a phone, the session's external_id, an IP,
# fbc, fbp, a first and a last name together...) makes the event valid.
_TOO_WEAK = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)


def deduplicates(event: ForwardEvent) -> bool:
    """Meta drops a second event with the same `event_id` and `event_name` (within 48 hours of the first)."""
    return True


def check(event: ForwardEvent, now: datetime) -> SendResult | None:
    """A permanent result when Meta would refuse this event (and with it its whole batch), else None."""
    old = too_old(event, now, MAX_AGE)
    if old:
        return old
    if event.kind == "order" and (event.value is None or not event.currency):
        return SendResult("permanent", "invalid", detail="a Purchase needs a value and a currency")
    keys = set(user_data(event))
    if not keys or any(keys <= weak for weak in _TOO_WEAK):
        return SendResult("permanent", "no_identifiers", detail="no customer information to match on")
    return None


def batches(events: Sequence[ForwardEvent]) -> list[list[ForwardEvent]]:
    """Events in request-sized groups of at most MAX_BATCH, in order."""
    return [list(events[i:i + MAX_BATCH]) for i in range(0, len(events), MAX_BATCH)]


def build_request(settings: MetaSettings, events: Sequence[ForwardEvent]) -> Request:
    """(method, url, headers, json body) for one batch; the token goes in the query string."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"a Meta request carries 1 to {MAX_BATCH} events, got {len(events)}")
    url = (f"{settings.base_url.rstrip('/')}/{quote(settings.api_version, safe='')}/"
           f"{quote(settings.pixel_id, safe='')}/events?{urlencode({'access_token': settings.access_token})}")
    body: dict[str, Any] = {"data": [event_payload(e) for e in events]}
    if settings.test_event_code:
        body["test_event_code"] = settings.test_event_code
    return "POST", url, {"Content-Type": "application/json"}, body


def classify(status: int, headers: Mapping[str, str], body: bytes) -> SendResult:
    """Meta's answer as ok / retry / permanent."""
    data = parse_json(body)
    error = data.get("error") if isinstance(data, dict) else None
    if 200 <= status < 300 and not isinstance(error, dict):
        received = data.get("events_received") if isinstance(data, dict) else None
        return SendResult("ok", "ok", status=status,
                          detail=f"{received} events received" if isinstance(received, int) else "")
    if not isinstance(error, dict):
        return http_result(status, headers, detail=f"HTTP {status} without a Meta error object")

    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    subcode = error.get("error_subcode")
    label = f"Meta error {code}" + (f"/{subcode}" if isinstance(subcode, int) else "")
    detail = f"{label}: {scrub(error.get('message', ''))}"
    platform_code = str(code) if code is not None else None
    after = retry_after(headers)
    if error.get("is_transient") is True or code in TRANSIENT_CODES:
        return SendResult("retry", "meta_transient", after, detail, status, platform_code)
    if code in THROTTLE_CODES:
        return SendResult("retry", "meta_throttled", after, detail, status, platform_code)
    if status in (408, 429) or status >= 500:
        return http_result(status, headers, detail, platform_code)
    if code == 100:
        reason = "meta_code_100"
    elif code == 190:
        reason = "meta_code_190"
    elif code == 10 or (code is not None and 200 <= code <= 299):
        reason = "meta_permission"
    else:
        reason = "meta_error"
    return SendResult("permanent", reason, None, detail, status, platform_code)


async def send(session: aiohttp.ClientSession, settings: MetaSettings, events: Sequence[ForwardEvent],
               timeout: float) -> SendResult:  # noqa: ASYNC109 - a per-request ClientTimeout, not a cancel scope
    """Posts one batch (see `batches`) and classifies the answer; timeouts and network errors -> retry."""
    return await post_json(session, build_request(settings, events), timeout, classify)
