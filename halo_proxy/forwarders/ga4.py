"""GA4 Measurement Protocol: ``POST {base_url}/mp/collect?measurement_id=..&api_secret=..``.

One request describes one client: ``client_id``, ``user_data`` and ``consent`` sit at the top level and apply to
every event in it. `batches` therefore groups only events that share all three, at most 25 a request. Each event
carries its own ``timestamp_micros`` (an event-level timestamp overrides the request's, per Google's
timestamp hierarchy); the request-level one is the earliest of the batch.

GA4 answers 2xx even for a payload it discards, so `validate` checks our own payload against the documented
limits (names, counts, lengths, body size) and `send` turns a violation into a permanent ``invalid`` without
calling GA4. For a non-2xx answer Google says "don't retry the same request": HaloTrack still retries 5xx, 408
and 429 (and timeouts and network errors), which say nothing about the request being wrong, and treats every
other status as permanent.

Decisions: ``client_id`` is the `_ga` cookie's id when known, else derived from the session id (hashed, so
HaloTrack's own session id never leaves), else from the event id (a conversion with no session still reaches
GA4, as a new client). ``transaction_id`` (GA4's purchase dedup key) is the order id, else the event id.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from halo_proxy.config import Ga4Settings

from . import normalize as n
from .models import ForwardEvent, SendResult, too_old
from .transport import http_result, post_json

__all__ = ["MAX_AGE", "MAX_BATCH", "MAX_BODY_BYTES", "batch_key", "batches", "build_request", "check", "deduplicates",
           "classify", "client_id_for", "client_id_from_cookie", "consent", "event_payload", "send",
           "user_data", "validate"]

MAX_BATCH = 25
MAX_AGE = timedelta(hours=72)
MAX_BODY_BYTES = 130_000
MAX_PARAMS = 25
MAX_NAME_CHARS = 40
MAX_PARAM_VALUE_CHARS = 100
MAX_USER_DATA_VALUES = 3
EVENT_NAMES = {"lead": "generate_lead", "order": "purchase"}

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED_PREFIXES = ("firebase_", "ga_", "google_", "gtag.")
_RESERVED_EVENTS = frozenset({
    "ad_activeview", "ad_click", "ad_exposure", "ad_query", "ad_reward", "adunit_exposure", "app_clear_data",
    "app_exception", "app_install", "app_remove", "app_store_refund", "app_update", "app_upgrade",
    "dynamic_link_app_open", "dynamic_link_app_update", "dynamic_link_first_open", "error", "firebase_campaign",
    "firebase_in_app_message_action", "firebase_in_app_message_dismiss", "firebase_in_app_message_impression",
    "first_open", "first_visit", "in_app_purchase", "notification_dismiss", "notification_foreground",
    "notification_open", "notification_receive", "notification_send", "os_update", "screen_view",
    "session_start", "user_engagement",
})
_GA_COOKIE_RE = re.compile(r"^GA\d+\.\d+\.(\d+\.\d+)$")
_CLIENT_ID_RE = re.compile(r"^\d+\.\d+$")

Request = tuple[str, str, dict[str, str], dict[str, Any]]


def client_id_from_cookie(cookie: str | None) -> str | None:
    """``GA1.1.1234567890.1700000000`` (the `_ga` cookie) -> ``1234567890.1700000000``; None if not of that form."""
    if not cookie:
        return None
    value = cookie.strip()
    match = _GA_COOKIE_RE.match(value)
    if match:
        return match.group(1)
    return value if _CLIENT_ID_RE.match(value) else None


def _derived_client_id(seed: str) -> str:
    digest = hashlib.sha256(b"halotrack-ga4-client|" + seed.encode("utf-8")).digest()
    first = int.from_bytes(digest[:4], "big")
    second = 1_000_000_000 + int.from_bytes(digest[4:8], "big") % 1_000_000_000
    return f"{first}.{second}"


def client_id_for(event: ForwardEvent) -> str:
    """The `_ga` client id, else one derived from the session id, else from the event id (stable either way)."""
    if event.ga_client_id:
        return event.ga_client_id
    if event.session_id:
        return _derived_client_id("session|" + event.session_id)
    return _derived_client_id("event|" + event.event_id)


def user_data(event: ForwardEvent) -> dict[str, Any]:
    """GA4 user-provided data: email (Google rules) and phone (E.164 with +), SHA-256 hex; none when the
    visitor denied ad_user_data."""
    out: dict[str, Any] = {}
    if event.ad_user_data is False:
        return out
    email = n.hashed(n.google_email, event.email)
    if email:
        out["sha256_email_address"] = [email]
    phone = n.hashed(n.e164_phone, event.phone)
    if phone:
        out["sha256_phone_number"] = [phone]
    return out


def consent(event: ForwardEvent) -> dict[str, str]:
    """``{"ad_user_data": "GRANTED"|"DENIED", "ad_personalization": ...}`` for the flags that are known."""
    out = {}
    for key in ("ad_user_data", "ad_personalization"):
        flag = getattr(event, key)
        if flag is not None:
            out[key] = "GRANTED" if flag else "DENIED"
    return out


def _micros(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000 + when.microsecond


def event_payload(event: ForwardEvent) -> dict[str, Any]:
    """One ``events[]`` item: ``generate_lead`` or ``purchase`` with its own ``timestamp_micros``."""
    params: dict[str, Any] = {}
    if event.kind == "order":
        params["transaction_id"] = event.order_id or event.event_id
    if event.value is not None and event.currency:
        params["value"] = event.value
        params["currency"] = event.currency.upper()
    return {"name": EVENT_NAMES[event.kind], "params": params, "timestamp_micros": _micros(event.event_time)}


def batch_key(event: ForwardEvent) -> bytes:
    """Events with equal keys may share one request (same client, user data and consent)."""
    return orjson.dumps([client_id_for(event), user_data(event), consent(event)])


def deduplicates(event: ForwardEvent) -> bool:
    """GA4 drops a second `purchase` with the same `transaction_id`; it has no key for any other event, so a lead
    that may have arrived once is never sent again (the delivery worker records it `unconfirmed`)."""
    return event.kind == "order"


def check(event: ForwardEvent, now: datetime) -> SendResult | None:
    """A permanent result when GA4 would drop this event (older than 72 h), else None."""
    return too_old(event, now, MAX_AGE)


def batches(events: Sequence[ForwardEvent]) -> list[list[ForwardEvent]]:
    """Groups of at most MAX_BATCH events sharing a `batch_key`, in order of first appearance."""
    groups: dict[bytes, list[ForwardEvent]] = {}
    for event in events:
        groups.setdefault(batch_key(event), []).append(event)
    out: list[list[ForwardEvent]] = []
    for group in groups.values():
        out.extend(group[i:i + MAX_BATCH] for i in range(0, len(group), MAX_BATCH))
    return out


def build_request(settings: Ga4Settings, events: Sequence[ForwardEvent]) -> Request:
    """(method, url, headers, json body) for events of one `batch_key`; the secret goes in the query string."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"a GA4 request carries 1 to {MAX_BATCH} events, got {len(events)}")
    keys = {batch_key(e) for e in events}
    if len(keys) != 1:
        raise ValueError("events of one GA4 request must share client id, user data and consent")
    first = events[0]
    body: dict[str, Any] = {
        "client_id": client_id_for(first),
        "timestamp_micros": min(_micros(e.event_time) for e in events),
        "events": [event_payload(e) for e in events],
    }
    data = user_data(first)
    if data:
        body["user_data"] = data
    flags = consent(first)
    if flags:
        body["consent"] = flags
    query = urlencode({"measurement_id": settings.measurement_id, "api_secret": settings.api_secret})
    return "POST", f"{settings.base_url.rstrip('/')}/mp/collect?{query}", {"Content-Type": "application/json"}, body


def _name_problem(kind: str, name: object) -> str | None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return f"{kind} name must start with a letter and hold only letters, digits and _"
    if len(name) > MAX_NAME_CHARS:
        return f"{kind} name is longer than {MAX_NAME_CHARS} characters"
    if name.startswith(_RESERVED_PREFIXES):
        return f"{kind} name uses a reserved prefix"
    return None


def validate(body: Mapping[str, Any]) -> list[str]:
    """Problems with a Measurement Protocol body under Google's documented limits; empty when it is fine."""
    problems: list[str] = []
    if not isinstance(body.get("client_id"), str) or not body["client_id"]:
        problems.append("client_id is missing")
    if len(orjson.dumps(body)) >= MAX_BODY_BYTES:
        problems.append(f"body is {MAX_BODY_BYTES} bytes or more")
    events = body.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        problems.append(f"events must hold 1 to {MAX_BATCH} events")
        events = []
    for i, event in enumerate(events):
        name = event.get("name") if isinstance(event, dict) else None
        problem = _name_problem("event", name)
        if problem:
            problems.append(f"events[{i}]: {problem}")
        elif name in _RESERVED_EVENTS:
            problems.append(f"events[{i}]: event name is reserved")
        params = event.get("params", {}) if isinstance(event, dict) else {}
        if not isinstance(params, dict) or len(params) > MAX_PARAMS:
            problems.append(f"events[{i}]: at most {MAX_PARAMS} params")
            continue
        for key, value in params.items():
            problem = _name_problem("param", key)
            if problem:
                problems.append(f"events[{i}].params: {problem}")
            if isinstance(value, str) and len(value) > MAX_PARAM_VALUE_CHARS:
                problems.append(f"events[{i}].params.{key}: longer than {MAX_PARAM_VALUE_CHARS} characters")
            elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
                problems.append(f"events[{i}].params.{key}: must be a string or a number")
        if "value" in params and "currency" not in params:
            problems.append(f"events[{i}].params: value needs a currency")
    for key, values in (body.get("user_data") or {}).items():
        values = values if isinstance(values, list) else [values]
        if len(values) > MAX_USER_DATA_VALUES:
            problems.append(f"user_data.{key}: at most {MAX_USER_DATA_VALUES} values")
        if not all(isinstance(v, str) and n.is_sha256_hex(v) and v == v.lower() for v in values):
            problems.append(f"user_data.{key}: values must be lowercase SHA-256 hex")
    return problems


def classify(status: int, headers: Mapping[str, str], body: bytes) -> SendResult:
    """2xx -> ok; 5xx, 408, 429 -> retry; any other status -> permanent (GA4: correct, don't resend)."""
    return http_result(status, headers)


async def send(session: aiohttp.ClientSession, settings: Ga4Settings, events: Sequence[ForwardEvent],
               timeout: float) -> SendResult:  # noqa: ASYNC109 - a per-request ClientTimeout, not a cancel scope
    """Validates, then posts one batch (see `batches`); a payload over GA4's limits is permanent ``invalid``."""
    request = build_request(settings, events)
    problems = validate(request[3])
    if problems:
        return SendResult("permanent", "invalid", detail="; ".join(problems)[:300])
    return await post_json(session, request, timeout, classify)
